{
  lib,
  git,
  mkShell,
  nix,
  openssh,
  path,
  python3,
  python3Packages,
  runCommand,
  util-linux,
}:
let
  project = (lib.importTOML ../pyproject.toml).project;
  checkPhase = import ./check-phase.nix;
  fs = lib.fileset;

  # Everything the test suite and the linters need, for the dev shell and the lint check.
  python-with-pkgs = python3.withPackages (
    ps: with ps; [
      # dependencies
      aiohttp
      asyncssh
      click
      platformdirs
      # tests
      hypothesis
      playwright
      pytest
      pytest-mock
      # linters
      mypy
      ruff
    ]
  );
in
python3Packages.buildPythonApplication rec {
  # Named as its attribute (the overlay's fleet-deploy): nixpkgs' own `fleet` is fleetdm's.
  pname = "fleet-deploy";
  inherit (project) version;
  pyproject = true;

  src = fs.toSource {
    root = ../.;
    # nix/check-phase.nix says which paths (scripts/check-sandboxed copies the same ones).
    fileset = fs.difference (fs.unions checkPhase.source) (
      fs.fileFilter (file: file.hasExt "pyc") ../.
    );
  };

  build-system = with python3Packages; [
    setuptools
  ];

  dependencies = with python3Packages; [
    aiohttp
    asyncssh
    click
    platformdirs
  ];

  # The controller runs git (pull requests, flake.lock bumps), ssh (through git) and nix
  # (flake updates), and `fleet demo`'s simulated hosts run `setsid -w` (util-linux); use the
  # ones fleet was built with, not whatever is on the caller's PATH.
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      git
      nix
      openssh
      util-linux
    ])
  ];

  # nix/check-phase.nix's `programs`, by name (scripts/check-sandboxed puts the same on PATH;
  # tests/nix checks that the two agree).
  nativeCheckInputs = [
    git
    # tests/nix parses every .nix file and evaluates nix/module.nix with nix-instantiate.
    nix
    openssh
    # setsid: the demo's hosts and the local transport's tests
    util-linux
  ]
  ++ (with python3Packages; [
    hypothesis
    pytest-mock
    pytestCheckHook
  ]);

  # Tests that need what the build sandbox has not (tests/conftest.py marks them): sshd run as
  # root, root itself, dozens to hundreds of simulated hosts, Chromium, the network. They run
  # in CI (.ci/run), which also runs exactly the rest as this check phase does
  # (scripts/check-sandboxed); the VM tests (nix/tests/) run fleet end to end.
  inherit (checkPhase) disabledTestMarks disabledTestPaths;

  preCheck = ''
    export HOME="$(mktemp -d)"

    # nix-instantiate (tests/nix) needs a store and a state directory of its own in the
    # sandbox, as in nixpkgs' lib tests.
    export TEST_ROOT="$(mktemp -d)"
    export NIX_STORE_DIR="$TEST_ROOT/store"
    export NIX_STATE_DIR="$TEST_ROOT/var/nix"
    export NIX_LOG_DIR="$TEST_ROOT/var/log/nix"
    export NIX_LOCALSTATE_DIR="$TEST_ROOT/var"
    export NIX_CONF_DIR="$TEST_ROOT/etc"
    export NIX_BUILD_HOOK=
    nix-store --init

    # tests/nix/test_module_eval.py evaluates nix/module.nix with this nixpkgs' lib.
    export FLEET_NIXPKGS_LIB=${path + "/lib"}
  '';

  # Unit tests bind loopback ports (the dashboard, the in-process SSH server).
  __darwinAllowLocalNetworking = true;

  pythonImportsCheck = [
    "fleet"
    "fleet.cli"
  ];

  passthru = {
    devShell = mkShell {
      packages = [
        python-with-pkgs
        git
        openssh
      ];
    };

    tests = {
      # A check of its own rather than part of the build, to keep the build's closure small
      # (as nixos-rebuild-ng does).
      linters = runCommand "${pname}-linters" { nativeBuildInputs = [ python-with-pkgs ]; } ''
        cp -r ${src} src
        chmod -R u+w src
        cd src
        export RUFF_CACHE_DIR="$TMPDIR/ruff" MYPY_CACHE_DIR="$TMPDIR/mypy"

        echo -e "\x1b[32m## run ruff\x1b[0m"
        ruff check
        echo -e "\x1b[32m## run ruff format\x1b[0m"
        ruff format --check
        echo -e "\x1b[32m## run mypy\x1b[0m"
        mypy

        touch $out
      '';
    };
  };

  meta = {
    inherit (project) description;
    license = lib.licenses.mit;
    mainProgram = "fleet";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
