# Evaluates flake.nix's outputs against the stand-in nixpkgs of nixpkgs/ (a copy of which, with
# the real lib in it, tests/nix/conftest.py passes as `nixpkgs`), and describes their shape for
# tests/nix/test_module_eval.py:
#
#   nix-instantiate --eval --strict --json tests/nix/eval-flake.nix -A shape \
#     --arg nixpkgs /path/to/stand-in-nixpkgs
{ nixpkgs }:
let
  standIn = (import "${nixpkgs}/flake.nix").outputs { self = standIn; } // {
    outPath = nixpkgs;
  };
  inherit (standIn) lib;
  flake = import ../../flake.nix;
  outputs = flake.outputs {
    self = outputs // {
      outPath = toString ../..;
    };
    nixpkgs = standIn;
  };
  names = lib.mapAttrs (_: lib.attrNames);
  pkgs = standIn.legacyPackages.x86_64-linux;
  package = outputs.packages.x86_64-linux.fleet;
  nameOf = p: p.pname or p.name;
  vmTest = test: {
    # evaluating it evaluates every node's system.build.toplevel and the test script
    inherit (test) drvPath;
    nodes = lib.mapAttrs (_: node: {
      toplevel = node.system.build.toplevel.drvPath;
      fleet = if node.services ? fleet then node.services.fleet.package.name else null;
      execStart = node.systemd.services.fleet.serviceConfig.ExecStart or null;
      additionalPaths = map toString node.virtualisation.additionalPaths;
    }) test.nodes;
    testScript = test.testScriptString;
  };
in
{
  inherit outputs;

  # nix/package.nix as the check phase gets it
  package = {
    src = "${package.src}";
    nativeCheckInputs = map nameOf package.nativeCheckInputs;
    wrapperPath = lib.last package.makeWrapperArgs;
    inherit (package) disabledTestMarks disabledTestPaths;
    lintSource = package.passthru.tests.linters.script;
  };

  vmTests = lib.mapAttrs (_: vmTest) {
    inherit (outputs.checks.x86_64-linux) vm-pipeline vm-dashboard;
  };

  shape = {
    inputs = flake.inputs;
    packages = names outputs.packages;
    packageNames = lib.mapAttrs (_: lib.mapAttrs (_: p: p.name)) outputs.packages;
    apps = lib.mapAttrs (_: lib.mapAttrs (_: app: removeAttrs app [ "meta" ])) outputs.apps;
    appDescriptions = lib.mapAttrs (_: lib.mapAttrs (_: app: app.meta.description)) outputs.apps;
    checks = lib.mapAttrs (_: lib.mapAttrs (_: check: check.name)) outputs.checks;
    devShells = lib.mapAttrs (_: lib.mapAttrs (_: shell: shell.name)) outputs.devShells;
    formatter = lib.mapAttrs (_: formatter: formatter.name) outputs.formatter;
    nixosModules = lib.attrNames outputs.nixosModules;
    # what the overlay adds to a nixpkgs that has fleetdm's fleet
    overlay = lib.attrNames (outputs.overlays.default pkgs pkgs);
    overlaid =
      (import nixpkgs {
        overlays = [ outputs.overlays.default ];
      }).fleet-deploy.name;
  };
}
