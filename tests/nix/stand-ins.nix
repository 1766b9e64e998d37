# Stand-ins for what nix/module.nix and flake.nix get from nixpkgs and NixOS, for evaluating
# them with nixpkgs' real lib on a machine that can build nothing (no binary cache): builders
# return placeholders that keep their inputs, and the NixOS options the module sets are
# declared loosely. Used by eval-module.nix and eval-flake.nix.
{ lib }:
let
  inherit (lib) mkOption types;

  # A derivation that exists only as a store path name.
  fakePackage = name: {
    type = "derivation";
    outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
    inherit name;
    pname = name;
    meta = {
      mainProgram = name;
      description = "stand-in for ${name}";
    };
  };

  # pkgs.formats.toml with the real option type (pkgs/pkgs-lib/formats.nix); its generate
  # keeps the value it would convert with json2toml.
  toml =
    { }:
    {
      type =
        let
          valueType =
            types.oneOf [
              types.bool
              types.int
              types.float
              types.str
              types.path
              (types.attrsOf valueType)
              (types.listOf valueType)
            ]
            // {
              description = "TOML value";
            };
        in
        valueType;
      generate = name: value: fakePackage name // { rendered = value; };
    };
in
rec {
  inherit fakePackage;

  pkgsFor =
    system:
    lib.genAttrs [
      "coreutils"
      "findutils"
      "git"
      "gnugrep"
      "gnused"
      "nixfmt-tree"
      "openssh"
      "systemd"
    ] fakePackage
    // {
      stdenv.hostPlatform.system = system;
      formats = { inherit toml; };
      writeShellApplication = { name, text, ... }: fakePackage name // { inherit text; };
      writeShellScript = name: text: fakePackage name // { inherit text; };
      # Only nix/package.nix is called: the fleet package, with its passthru.
      callPackage =
        path: _:
        assert baseNameOf path == "package.nix";
        fakePackage "fleet"
        // {
          passthru = {
            devShell = fakePackage "fleet-dev-shell";
            tests.linters = fakePackage "fleet-linters";
          };
        };
      # Loads the test module (nix/tests/common.nix) just enough to name it.
      testers.runNixOSTest =
        test:
        let
          module = test {
            inherit lib;
            hostPkgs = throw "the stand-in runNixOSTest evaluates only the test's name";
          };
        in
        fakePackage "vm-test-${module.name}";
    };

  pkgs = pkgsFor "x86_64-linux";

  # nixpkgs' flake, with the real lib.
  nixpkgs = {
    inherit lib;
    outPath = "${builtins.storeDir}/00000000000000000000000000000000-source";
    legacyPackages = lib.genAttrs [
      "x86_64-linux"
      "aarch64-linux"
      "x86_64-darwin"
      "aarch64-darwin"
    ] pkgsFor;
  };

  # nixos/lib/utils.nix
  utils = rec {
    escapeSystemdExecArg =
      arg:
      let
        s =
          if builtins.isPath arg then
            "${arg}"
          else if builtins.isString arg then
            arg
          else if builtins.isInt arg || builtins.isFloat arg || lib.isDerivation arg then
            toString arg
          else
            throw "escapeSystemdExecArg only allows strings, paths, numbers and derivations";
      in
      builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);
    escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;
  };

  # The NixOS options the module sets or reads, loosely typed.
  nixosOptions =
    let
      loose = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; });
      option =
        type: default:
        mkOption {
          inherit type default;
        };
    in
    {
      options = {
        assertions = option (types.listOf types.unspecified) [ ];
        warnings = option (types.listOf types.str) [ ];
        environment.systemPackages = option (types.listOf types.package) [ ];
        networking.firewall.allowedTCPPorts = option (types.listOf types.port) [ ];
        security.sudo.enable = option types.bool true;
        security.sudo.extraRules = option (types.listOf types.anything) [ ];
        systemd.package = option types.package pkgs.systemd;
        systemd.services = option loose { };
        systemd.timers = option loose { };
        users.users = option loose { };
        users.groups = option loose { };
      };
    };
}
