# A target of fleet's VM tests: the test node boots with this, and every system of the config
# flake it switches to (configurations.nix) has it too, so that it stays reachable and can
# always switch again.
{ lib, pkgs, ... }:
let
  inherit (import (pkgs.path + "/nixos/tests/ssh-keys.nix") pkgs) snakeOilPublicKey;
in
{
  # fleet logs in as root, and runs git (pull) and nixos-rebuild (switch).
  services.openssh.enable = true;
  users.users.root.openssh.authorizedKeys.keys = [ snakeOilPublicKey ];
  environment.systemPackages = [ pkgs.git ];
  # The config repository is on the controller (git@controller:config.git).
  programs.ssh.extraConfig = ''
    Host controller
      StrictHostKeyChecking accept-new
  '';

  # Switch offline: nothing to substitute, no flake registry; every input is in the store.
  nix.settings = {
    substituters = lib.mkForce [ ];
    hashed-mirrors = null;
    connect-timeout = 1;
    flake-registry = "";
    experimental-features = [
      "nix-command"
      "flakes"
    ];
  };
  system.switch.enable = true;

  documentation.enable = false;
  boot.loader.grub.enable = false;
  system.stateVersion = lib.trivial.release;

  # Evaluating and building a NixOS system needs the memory.
  virtualisation = {
    cores = 2;
    memorySize = 4096;
  };
}
