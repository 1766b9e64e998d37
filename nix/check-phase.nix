# What the package's check phase has and runs, as plain data (no nixpkgs needed to read it):
# nix/package.nix builds with it, and scripts/check-sandboxed runs the same tests outside Nix,
# the way the build sandbox runs them.
{
  # The package's source: these paths (as far as git tracks them) and nothing else.
  source = [
    ../pyproject.toml
    ../README.md
    ../fleet
    # tests/integration/test_bench_smoke.py imports bench.profile, and the linters check it
    ../bench
    ../tests
    # tests/nix checks the Nix files themselves.
    ../flake.nix
    ../flake.lock
    ../nix
  ];

  # Tests that need what a build sandbox has not (pytest marks; tests/conftest.py sets them).
  disabledTestMarks = [
    "sshd"
    "root"
    "many_processes"
    "chromium"
    "network"
  ];

  # Not even collected: Playwright is no check input.
  disabledTestPaths = [ "tests/browser" ];

  # The check phase's programs besides stdenv's and Python's (nativeCheckInputs, by attribute).
  programs = [
    "git"
    "nix"
    "openssh"
    "util-linux"
  ];
}
