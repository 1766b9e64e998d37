# The config flake of fleet's VM tests, as the targets check it out: one NixOS system per
# target. nix/tests/common.nix writes in the nixpkgs input (this nixpkgs, from the store).
{
  description = "fleet VM test: the fleet's configuration";

  inputs.nixpkgs.url = "@nixpkgs@";

  outputs =
    { nixpkgs, ... }:
    {
      nixosConfigurations = import ./configurations.nix {
        inherit nixpkgs;
        hosts = builtins.fromJSON (builtins.readFile ./hosts.json);
      };
    };
}
