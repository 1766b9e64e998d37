# Stand-in for pkgs.testers.runNixOSTest (nixos/lib/testing): evaluates the test module, each
# node's NixOS configuration (module arguments `nodes`, `name` and the node's network config,
# as nixos/lib/testing/nodes.nix and network.nix give them) and the test script. The result is
# a derivation, never built, that depends on every node's system.build.toplevel and on the test
# script, so that evaluating its drvPath evaluates all of them.
{ pkgs }:
test:
let
  inherit (pkgs) lib;

  testModule =
    { config, ... }:
    let
      nodeNumbers = lib.listToAttrs (
        lib.imap1 (number: name: lib.nameValuePair name number) (lib.attrNames config.nodes)
      );
      node =
        (import ../eval-config.nix {
          inherit lib;
          modules = [
            ./nixos-test-base.nix
            (
              { name, config, ... }:
              let
                address = "192.168.1.${toString nodeNumbers.${name}}";
                networkConfig = {
                  networking.hostName = lib.mkDefault name;
                  networking.primaryIPAddress = address;
                  networking.interfaces.eth1.ipv4.addresses = [
                    {
                      inherit address;
                      prefixLength = 24;
                    }
                  ];
                };
              in
              networkConfig
              // {
                nixpkgs.hostPlatform = pkgs.stdenv.hostPlatform.system;
                system.build.networkConfig = networkConfig;
              }
            )
            { _module.args.nodes = config.nodes; }
          ];
        }).type;
    in
    {
      options = {
        name = lib.mkOption { type = lib.types.str; };
        nodes = lib.mkOption {
          type = lib.types.lazyAttrsOf node;
          default = { };
        };
        testScript = lib.mkOption {
          type = with lib.types; either str (functionTo str);
          apply = v: if lib.isFunction v then args: v (builtins.intersectAttrs (lib.functionArgs v) args) else v;
        };
        globalTimeout = lib.mkOption {
          type = lib.types.ints.positive;
          default = 60 * 60;
        };
        testScriptString = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
        };
      };
      config.testScriptString =
        if lib.isFunction config.testScript then
          config.testScript { inherit (config) nodes; }
        else
          config.testScript;
    };

  evaluated = lib.evalModules {
    modules = [
      testModule
      test
    ];
    specialArgs.hostPkgs = pkgs;
  };
  inherit (evaluated) config;
in
derivation {
  name = "vm-test-run-${config.name}";
  inherit (pkgs.stdenv.hostPlatform) system;
  builder = "/bin/sh";
  args = [
    "-c"
    "exit 1"
  ];
  testScript = config.testScriptString;
  globalTimeout = toString config.globalTimeout;
  nodes = lib.mapAttrsToList (_: node: node.system.build.toplevel) config.nodes;
}
// {
  inherit (config) nodes testScriptString;
}
