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
}:
let
  project = (lib.importTOML ../pyproject.toml).project;
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
  pname = "fleet";
  inherit (project) version;
  pyproject = true;

  src = fs.toSource {
    root = ../.;
    fileset = fs.difference (fs.unions [
      ../pyproject.toml
      (fs.maybeMissing ../README.md)
      ../fleet
      ../tests
      # tests/nix checks the Nix files themselves.
      ../flake.nix
      ../flake.lock
      ../nix
    ]) (fs.fileFilter (file: file.hasExt "pyc") ../.);
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
  # (flake updates); use the ones fleet was built with, not whatever is on the caller's PATH.
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      git
      nix
      openssh
    ])
  ];

  nativeCheckInputs = [
    git
    # tests/nix parses every .nix file and evaluates nix/module.nix with nix-instantiate.
    nix
    openssh
  ]
  ++ (with python3Packages; [
    hypothesis
    pytest-mock
    pytestCheckHook
  ]);

  # The tests marked sshd (tests/integration, tests/faults, tests/web, tests/browser) start
  # real sshd servers as root on 127.0.0.x and log in to them. The build sandbox is not root
  # and its build user has no login shell, so sshd refuses it. They run in CI (.ci/run) and,
  # end to end, in the VM tests (nix/tests/).
  disabledTestMarks = [ "sshd" ];

  disabledTestPaths = lib.filter (path: builtins.pathExists (../. + "/${path}")) [
    # Drives a real Chromium through Playwright, which the sandbox has neither of. Runs in CI.
    "tests/browser"
  ];

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
