# Evaluates nix/module.nix (or the flake's nixosModules.fleet, which wraps it) with nixpkgs'
# real module system, lib.evalModules, and the stand-ins of stand-ins.nix. Prints what
# tests/nix/test_module_eval.py checks:
#
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix \
#     --arg lib 'import /path/to/nixpkgs/lib' --argstr configJson '{"services":{"fleet":{...}}}'
{
  lib,
  configJson,
  # evaluate the flake's nixosModules.fleet instead of nix/module.nix
  fromFlake ? false,
  # whether pkgs has fleet (as after the flake's overlay)
  withOverlay ? true,
}:
let
  standIns = import ./stand-ins.nix { inherit lib; };

  module =
    if fromFlake then
      (import ./eval-flake.nix { inherit lib; }).outputs.nixosModules.fleet
    else
      ../../nix/module.nix;

  eval = lib.evalModules {
    modules = [
      standIns.nixosOptions
      module
      (builtins.fromJSON configJson)
    ];
    specialArgs = {
      inherit (standIns) utils;
      pkgs =
        standIns.pkgs
        // lib.optionalAttrs withOverlay {
          fleet = standIns.fakePackage "fleet" // {
            pname = "fleet-from-overlay";
          };
        };
    };
  };
  inherit (eval) config;
  cfg = config.services.fleet;
  withoutModule = lib.mapAttrs (_: value: removeAttrs value [ "_module" ]);
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  package = cfg.package.pname;
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
