{
  description = "fleet: multi-step deployment pipelines (pull, switch, test) across NixOS hosts over SSH";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      linux = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      darwin = [
        "x86_64-darwin"
        "aarch64-darwin"
      ];

      # { <system> = f <nixpkgs for system>; } for each of systems
      forSystems = systems: f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      fleetOf = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system}.fleet;
    in
    {
      # nixpkgs has a `fleet` of its own, fleetdm's Fleet server (pkgs/by-name/fl/fleet, binary
      # `fleet`), so the overlay adds this one under a name nixpkgs does not use; its binary is
      # still `fleet`.
      overlays.default = final: prev: {
        fleet-deploy = final.callPackage ./nix/package.nix { };
      };

      packages = forSystems (linux ++ darwin) (pkgs: {
        fleet = pkgs.callPackage ./nix/package.nix { };
        default = fleetOf pkgs;
      });

      # nix run .#fleet -- do-all
      apps = forSystems (linux ++ darwin) (
        pkgs:
        let
          fleet = {
            type = "app";
            program = lib.getExe (fleetOf pkgs);
            meta.description = (fleetOf pkgs).meta.description;
          };
        in
        {
          inherit fleet;
          default = fleet;
        }
      );

      nixosModules = {
        fleet =
          { lib, pkgs, ... }:
          {
            key = "fleet#nixosModules.fleet";
            imports = [ ./nix/module.nix ];
            # This flake's fleet, built with the host's own nixpkgs (the same derivation as the
            # overlay's fleet-deploy): never pkgs.fleet, which is fleetdm's.
            services.fleet.package = lib.mkDefault (pkgs.callPackage ./nix/package.nix { });
          };
        default = self.nixosModules.fleet;
      };

      checks = forSystems linux (
        pkgs:
        let
          fleet = fleetOf pkgs;
          vmTests = import ./nix/tests {
            inherit pkgs nixpkgs;
            fleetModule = self.nixosModules.fleet;
          };
        in
        {
          # The package: its test suite runs in the build.
          package = fleet;
          # ruff check, ruff format --check and mypy --strict.
          lint = fleet.passthru.tests.linters;
          # A real pull -> switch -> test across three VMs, run from the CLI.
          vm-pipeline = vmTests.pipeline;
          # The service and its dashboard API running the same pipeline.
          vm-dashboard = vmTests.dashboard;
        }
      );

      devShells = forSystems linux (pkgs: {
        default = (fleetOf pkgs).passthru.devShell;
      });

      # nixfmt over the whole tree (nix fmt)
      formatter = forSystems linux (pkgs: pkgs.nixfmt-tree);
    };
}
