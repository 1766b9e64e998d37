# Stand-in for nixpkgs' nixos/tests/ssh-keys.nix: the snake-oil key pair of NixOS tests.
pkgs: {
  snakeOilPrivateKey = pkgs.writeText "privkey.snakeoil" "stand-in private key\n";
  snakeOilPublicKey = "ecdsa-sha2-nistp256 AAAAstand-in snakeoil";
}
