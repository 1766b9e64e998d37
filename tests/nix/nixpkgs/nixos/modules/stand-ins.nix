# The NixOS options that fleet's module and its VM tests' nodes set or read, declared with
# their types (no freeform at the top: a misspelt option is an error, as in NixOS), and a
# system.build.toplevel that, like NixOS's, fails on a failed assertion.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  option =
    type: default:
    mkOption {
      inherit type default;
    };
  # Settings whose own options these stand-ins do not declare.
  loose = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; });
  failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
in
{
  options = {
    assertions = option (types.listOf types.unspecified) [ ];
    warnings = option (types.listOf types.str) [ ];
    boot.loader.grub.enable = option types.bool true;
    documentation.enable = option types.bool true;
    environment.etc = option loose { };
    environment.systemPackages = option (types.listOf types.package) [ ];
    networking.extraHosts = option types.lines "";
    networking.firewall.allowedTCPPorts = option (types.listOf types.port) [ ];
    networking.hostName = option types.str "nixos";
    networking.interfaces = option loose { };
    networking.primaryIPAddress = option types.str "";
    networking.primaryIPv6Address = option types.str "";
    nix.settings = option (types.attrsOf types.anything) { };
    nixpkgs.hostPlatform = option types.str "x86_64-linux";
    nixpkgs.overlays = option (types.listOf types.unspecified) [ ];
    programs.ssh.extraConfig = option types.lines "";
    security.sudo.enable = option types.bool true;
    security.sudo.extraRules = option (types.listOf types.anything) [ ];
    services.openssh.enable = option types.bool false;
    system.build = option (types.lazyAttrsOf types.raw) { };
    system.stateVersion = option types.str lib.trivial.release;
    system.switch.enable = option types.bool true;
    systemd.package = option types.package pkgs.systemd;
    systemd.services = option loose { };
    systemd.timers = option loose { };
    users.groups = option loose { };
    users.users = option loose { };
    virtualisation.additionalPaths = option (types.listOf types.path) [ ];
    virtualisation.cores = option types.ints.positive 1;
    virtualisation.memorySize = option types.ints.positive 1024;
  };

  config = {
    _module.args = {
      pkgs = lib.mkDefault (
        import ../.. {
          system = config.nixpkgs.hostPlatform;
          inherit (config.nixpkgs) overlays;
        }
      );
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
    };

    system.build.toplevel =
      if failed != [ ] then
        throw "Failed assertions:\n${lib.concatMapStrings (m: "- ${m}\n") failed}"
      else
        derivation {
          name = "nixos-system-${config.networking.hostName}";
          system = config.nixpkgs.hostPlatform;
          builder = "/bin/sh";
          args = [
            "-c"
            "exit 1"
          ];
          packages = config.environment.systemPackages;
          additionalPaths = config.virtualisation.additionalPaths;
          # everything the units run (derivations become their store paths)
          units = builtins.toJSON {
            inherit (config.systemd) services timers;
            etc = config.environment.etc;
          };
        };
  };
}
