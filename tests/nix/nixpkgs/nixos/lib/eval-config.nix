# Stand-in for nixpkgs' nixos/lib/eval-config.nix: lib.evalModules over the stand-in NixOS
# options (../modules/stand-ins.nix) and the given modules.
{
  system ? null,
  modules,
  baseModules ? [ ],
  specialArgs ? { },
  lib ? import ../../lib,
  ...
}:
lib.evalModules {
  class = "nixos";
  modules =
    baseModules
    ++ [ ../modules/stand-ins.nix ]
    ++ lib.optional (system != null) { nixpkgs.hostPlatform = lib.mkDefault system; }
    ++ modules;
  specialArgs = {
    modulesPath = toString ../modules;
  }
  // specialArgs;
}
