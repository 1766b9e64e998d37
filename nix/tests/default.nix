# fleet's NixOS VM tests (the flake runs them as checks):
#   pipeline   `fleet do-all` pulls, switches and tests a config flake on three targets: a change
#              that breaks one target, its repair, and a target cut off the network
#   dashboard  the service is up, and its API runs the same pipeline
{
  pkgs,
  # the NixOS module to test (the flake's nixosModules.fleet)
  fleetModule,
  # nixpkgs' source, for the config flake the targets switch with; the flake passes its input
  nixpkgs ? builtins.path {
    path = pkgs.path;
    name = "source";
  },
}:
{
  pipeline = pkgs.testers.runNixOSTest (import ./pipeline.nix { inherit fleetModule nixpkgs; });
  dashboard = pkgs.testers.runNixOSTest (import ./dashboard.nix { inherit fleetModule nixpkgs; });
}
