# Evaluates nix/module.nix (or the flake's nixosModules.fleet, which wraps it) with nixpkgs'
# real module system and the stand-in NixOS of nixpkgs/ (a copy of which, with the real lib
# in it, tests/nix/conftest.py passes as `nixpkgs`). Prints what test_module_eval.py checks:
#
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix \
#     --arg nixpkgs /path/to/stand-in-nixpkgs --argstr configJson '{"services":{"fleet":{...}}}'
{
  nixpkgs,
  configJson,
  # evaluate the flake's nixosModules.fleet instead of nix/module.nix
  fromFlake ? false,
  # whether the host applies the flake's overlay (pkgs.fleet-deploy)
  withOverlay ? true,
}:
let
  flake = import ./eval-flake.nix { inherit nixpkgs; };
  module = if fromFlake then flake.outputs.nixosModules.fleet else ../../nix/module.nix;

  eval = import "${nixpkgs}/nixos/lib/eval-config.nix" {
    modules = [
      module
      (builtins.fromJSON configJson)
      { nixpkgs.overlays = if withOverlay then [ flake.outputs.overlays.default ] else [ ]; }
    ];
  };
  inherit (eval) config;
  inherit (eval._module.args) pkgs;
  cfg = config.services.fleet;
  withoutModule = lib.mapAttrs (_: value: removeAttrs value [ "_module" ]);
  lib = import "${nixpkgs}/lib";
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  package = cfg.package.pname;
  packagePath = "${cfg.package}";
  # nixpkgs' own fleet (fleetdm's), which the host's pkgs has too
  fleetdmPath = "${pkgs.fleet}";
  settings = cfg.configFile.rendered;
  configFile = "${cfg.configFile}";
  services = withoutModule config.systemd.services;
  timers = withoutModule config.systemd.timers;
  scripts = map (p: {
    inherit (p) name;
    text = p.text or null;
  }) config.environment.systemPackages;
  inherit (config.networking.firewall) allowedTCPPorts;
  sudoRules = config.security.sudo.extraRules;
  users = withoutModule config.users.users;
  groups = lib.attrNames config.users.groups;
}
