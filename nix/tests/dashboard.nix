# fleet.service: it starts with a generated token and logs only where it is, clones the
# controller repository, and its API's Do All runs the same pipeline as the CLI, to COMPLETE.
{ fleetModule, nixpkgs }:
import ./common.nix {
  inherit fleetModule nixpkgs;
  name = "fleet-dashboard";
  targets = [ "target1" ];
  rounds = {
    initial.target1.marker = "v1";
    deploy.target1.marker = "v2";
  };
  script = ./dashboard.py;
}
