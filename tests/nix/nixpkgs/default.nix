# A stand-in for nixpkgs (`import nixpkgs { system; overlays; }`) on a machine that can build
# nothing: nixpkgs' real lib (./lib, copied in by tests/nix/conftest.py or scripts/check-flake),
# real callPackage and overlays, and builders that return real, never built derivations that
# keep their inputs for the tests to read. Like nixpkgs 25.11 it has an unrelated `fleet`
# (fleetdm's), which nothing of this repository may pick up.
{
  system ? "x86_64-linux",
  overlays ? [ ],
}:
let
  lib = import ./lib;

  # A derivation that is never built: drvPath and outPath are real.
  mkDerivation =
    name: env:
    derivation (
      {
        inherit name system;
        builder = "/bin/sh";
        args = [
          "-c"
          "echo this stand-in is never built; exit 1"
        ];
      }
      // env
    );

  package =
    pname: meta:
    mkDerivation pname { }
    // {
      inherit pname;
      meta = {
        mainProgram = pname;
        description = "stand-in for ${pname}";
      }
      // meta;
    };

  # What derivation attributes can be: strings, paths, derivations and lists of them.
  envOf = lib.filterAttrs (
    _: value: builtins.isString value || builtins.isPath value || lib.isDerivation value || builtins.isList value
  );

  base = self: {
    inherit lib;
    path = ./.;
    stdenv.hostPlatform = {
      inherit system;
      isLinux = lib.hasSuffix "-linux" system;
      isDarwin = lib.hasSuffix "-darwin" system;
    };
    callPackage = lib.callPackageWith self;

    # nixpkgs 25.11's pkgs/by-name/fl/fleet: fleetdm's Fleet server, whose binary is `fleet`.
    fleet = package "fleet" {
      description = "stand-in for fleetdm's Fleet server";
      homepage = "https://github.com/fleetdm/fleet";
    };

    coreutils = package "coreutils" { };
    curl = package "curl" { };
    findutils = package "findutils" { };
    git = package "git" { };
    gnugrep = package "gnugrep" { };
    gnused = package "gnused" { };
    jq = package "jq" { };
    nix = package "nix" { };
    nixfmt-tree = package "nixfmt-tree" { };
    openssh = package "openssh" { };
    systemd = package "systemd" { };
    util-linux = package "util-linux" { };

    python3 = package "python3" { } // {
      withPackages = select: mkDerivation "python3-env" { packages = select self.python3Packages; };
    };
    python3Packages =
      lib.genAttrs [
        "aiohttp"
        "asyncssh"
        "click"
        "hypothesis"
        "mypy"
        "platformdirs"
        "playwright"
        "pytest"
        "pytest-mock"
        "pytestCheckHook"
        "ruff"
        "setuptools"
      ] (name: package name { })
      // {
        # Keeps what it was given (passthru and meta too), as the tests read it.
        buildPythonApplication =
          attrs:
          mkDerivation "${attrs.pname}-${attrs.version}" (envOf (removeAttrs attrs [ "passthru" ]))
          // attrs
          // attrs.passthru or { };
      };

    mkShell = { packages, ... }: mkDerivation "nix-shell" { inherit packages; };
    runCommand = name: env: script: mkDerivation name (envOf env // { inherit script; });
    writeText = name: text: mkDerivation name { inherit text; } // { inherit text; };
    writeShellScript = name: text: mkDerivation name { inherit text; } // { inherit text; };
    writeShellApplication =
      { name, text, ... }@attrs:
      mkDerivation name (envOf attrs)
      // {
        inherit text;
        meta.mainProgram = name;
      };
    writeClosure = paths: mkDerivation "runtime-closure" { inherit paths; };
    # pkgs.formats.toml with the real option type (pkgs/pkgs-lib/formats.nix); its generate
    # keeps the value that json2toml would convert.
    formats.toml =
      { }:
      {
        type =
          let
            valueType =
              lib.types.oneOf [
                lib.types.bool
                lib.types.int
                lib.types.float
                lib.types.str
                lib.types.path
                (lib.types.attrsOf valueType)
                (lib.types.listOf valueType)
              ]
              // {
                description = "TOML value";
              };
          in
          valueType;
        generate = name: value: mkDerivation name { json = builtins.toJSON value; } // { rendered = value; };
      };

    testers.runNixOSTest = import ./nixos/lib/testing { pkgs = self; };
  };
in
lib.fix (lib.extends (lib.composeManyExtensions overlays) base)
