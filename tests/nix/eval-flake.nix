# Evaluates flake.nix's outputs against the stand-in nixpkgs of stand-ins.nix (the real lib;
# package sets whose builders return placeholders), and describes their shape for
# tests/nix/test_module_eval.py:
#
#   nix-instantiate --eval --strict --json tests/nix/eval-flake.nix -A shape \
#     --arg lib 'import /path/to/nixpkgs/lib'
{ lib }:
let
  standIns = import ./stand-ins.nix { inherit lib; };
  flake = import ../../flake.nix;
  outputs = flake.outputs {
    self = outputs // {
      outPath = toString ../..;
    };
    inherit (standIns) nixpkgs;
  };
  names = lib.mapAttrs (_: lib.attrNames);
in
{
  inherit outputs;

  shape = {
    inputs = flake.inputs;
    packages = names outputs.packages;
    apps = lib.mapAttrs (_: lib.mapAttrs (_: app: removeAttrs app [ "meta" ])) outputs.apps;
    appDescriptions = lib.mapAttrs (_: lib.mapAttrs (_: app: app.meta.description)) outputs.apps;
    checks = lib.mapAttrs (_: lib.mapAttrs (_: check: check.name)) outputs.checks;
    devShells = lib.mapAttrs (_: lib.mapAttrs (_: shell: shell.name)) outputs.devShells;
    formatter = lib.mapAttrs (_: formatter: formatter.name) outputs.formatter;
    nixosModules = lib.attrNames outputs.nixosModules;
    overlay = lib.attrNames (outputs.overlays.default standIns.pkgs standIns.pkgs);
  };
}
