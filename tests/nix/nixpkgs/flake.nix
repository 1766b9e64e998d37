# The stand-in nixpkgs as a flake, for `nix flake check --override-input nixpkgs` (scripts/
# check-flake): nixpkgs' real lib (copied in beside this file), stand-in package sets.
{
  outputs =
    { self }:
    let
      lib = import ./lib;
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ] (system: import ./. { inherit system; });
    };
}
