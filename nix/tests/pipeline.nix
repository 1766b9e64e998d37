# `fleet do-all`, run on the controller, against three targets that switch to the systems of a
# config flake pulled from the controller's git server. The config repository goes through these
# rounds (one commit each): a first one that the targets check out, a change that breaks
# target3 (PARTIAL), its repair (COMPLETE), and a change deployed while target2 is cut off the
# network (PARTIAL again: target2 FAILED at pull).
{ fleetModule, nixpkgs }:
import ./common.nix {
  inherit fleetModule nixpkgs;
  name = "fleet-pipeline";
  targets = [
    "target1"
    "target2"
    "target3"
  ];
  rounds = {
    initial = {
      target1.marker = "v1";
      target2.marker = "v1";
      target3.marker = "v1";
    };
    broken = {
      target1.marker = "v2";
      target2.marker = "v2";
      target3 = {
        marker = "v2";
        broken = true;
      };
    };
    repaired = {
      target1.marker = "v2";
      target2.marker = "v2";
      target3.marker = "v2";
    };
    cut = {
      target1.marker = "v3";
      target2.marker = "v3";
      target3.marker = "v3";
    };
  };
  script = ./pipeline.py;
}
