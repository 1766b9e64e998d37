# What fleet's VM tests share: a controller that runs the fleet module and serves the config
# repository over SSH (git@controller:config.git), targets that hold a checkout of it in
# /etc/nixos, and the test script's helpers (common.py). Returns a test for runNixOSTest.
#
# The targets switch offline, as in nixpkgs' nixos-rebuild tests and colmena's and deploy-rs's
# integration tests: no substituters and no flake registry (config/target.nix); the config
# flake's nixpkgs is this nixpkgs, locked as path:<its store path>, which is in every VM's store;
# each system a target will switch to is evaluated here by the same function as the flake in
# the VM (config/configurations.nix), and its whole build closure is in the target's store; and
# those systems import nixos-test-base.nix and the node's own network config, so that the test
# driver and the addresses survive the switch.
{
  fleetModule,
  nixpkgs,
  name,
  # the target nodes
  targets,
  # the states of the config repository: { <round> = { <target> = { marker; broken ? false; }; }; }
  rounds,
  # the test script; common.py comes before it
  script,
}:
{ lib, hostPkgs, ... }:
let
  sshKeys = import (hostPkgs.path + "/nixos/tests/ssh-keys.nix") hostPkgs;
  nixpkgsPath = "${nixpkgs}";
  system = hostPkgs.stdenv.hostPlatform.system;

  # The hosts.json of a round: what config/configurations.nix builds each target from.
  hostsOf =
    nodes: round:
    lib.mapAttrs (target: host: {
      inherit system;
      inherit (host) marker;
      broken = host.broken or false;
      network = nodes.${target}.system.build.networkConfig;
    }) rounds.${round};

  # The systems of a round's config flake, evaluated as the flake in the VM evaluates them
  # (from the same JSON).
  systemsOf =
    nodes: round:
    import ./config/configurations.nix {
      nixpkgs = nixpkgsPath;
      hosts = builtins.fromJSON (builtins.toJSON (hostsOf nodes round));
    };

  # Every derivation in a system's build closure and every output of those (exportReferencesGraph
  # of a .drv includes the outputs): with these in its store, a target builds the system, or one
  # that differs from it in a few files, offline. colmena's integration-tests/tools.nix does the
  # same with the since removed writeReferencesToFile.
  inputClosureOf = drv: hostPkgs.writeClosure [ drv.drvPath ];

  # The systems a target switches to in this test (its working ones in every round).
  systemsFor =
    nodes: target:
    lib.concatMap (
      round:
      lib.optional (!(rounds.${round}.${target}.broken or false))
        (systemsOf nodes round).${target}.config.system.build.toplevel
    ) (lib.attrNames rounds);

  # The tree of the config repository in a round.
  repoTree =
    nodes: round:
    hostPkgs.runCommand "fleet-test-config-${round}"
      {
        hostsJson = builtins.toJSON (hostsOf nodes round);
        passAsFile = [ "hostsJson" ];
      }
      ''
        mkdir -p $out
        substitute ${./config/flake.nix} $out/flake.nix --replace-fail @nixpkgs@ path:${nixpkgsPath}
        cp ${./config/configurations.nix} $out/configurations.nix
        cp ${./config/target.nix} $out/target.nix
        cp "$hostsJsonPath" $out/hosts.json
        ${lib.concatMapStrings (target: ''
          mkdir -p $out/hosts/${target}/tests
          echo ${lib.escapeShellArg rounds.${round}.${target}.marker} > $out/hosts/${target}/expected-marker
          install -m 755 ${./config/marker-test.sh} $out/hosts/${target}/tests/marker
        '') targets}
      '';

  # Written before common.py: the machines and the rounds.
  prelude =
    nodes:
    let
      trees = lib.genAttrs (lib.attrNames rounds) (round: "${repoTree nodes round}");
      markers = lib.mapAttrs (_: lib.mapAttrs (_: host: host.marker)) rounds;
    in
    ''
      TARGETS = [${lib.concatStringsSep ", " targets}]
      ROUNDS = ${builtins.toJSON trees}
      MARKERS = ${builtins.toJSON markers}
      SNAKEOIL_KEY = "${sshKeys.snakeOilPrivateKey}"
    '';

  target =
    targetName:
    { nodes, ... }:
    {
      imports = [ ./config/target.nix ];
      virtualisation.additionalPaths = [
        nixpkgsPath
      ]
      ++ map inputClosureOf (systemsFor nodes targetName);
    };

  controller =
    { lib, pkgs, ... }:
    {
      imports = [ fleetModule ];

      services.fleet = {
        enable = true;
        # A key outside the store, root's only, as a secret manager would place it.
        sshKeyFile = "/etc/fleet-test/id_ecdsa";
        controllerRepoUrl = "git@controller:config.git";
        settings = {
          ssh = {
            host_key_policy = "accept-new";
            connect_timeout = 5;
          };
          defaults = {
            user = "root";
            repo = "/etc/nixos";
            branch = "main";
          };
          hosts = lib.genAttrs targets (_: { });
          controller = {
            git_name = "fleet (VM test)";
            git_email = "fleet@controller";
          };
        };
      };
      environment.etc."fleet-test/id_ecdsa" = {
        source = sshKeys.snakeOilPrivateKey;
        mode = "0400";
      };

      # The git server: the config repository, over SSH.
      services.openssh.enable = true;
      users.users.git = {
        isSystemUser = true;
        group = "git";
        home = "/srv/git";
        createHome = true;
        shell = "${pkgs.git}/bin/git-shell";
        openssh.authorizedKeys.keys = [ sshKeys.snakeOilPublicKey ];
      };
      users.groups.git = { };
      programs.ssh.extraConfig = ''
        Host controller
          StrictHostKeyChecking accept-new
      '';

      # `nix flake lock` of the config flake, offline.
      nix.settings = {
        substituters = lib.mkForce [ ];
        flake-registry = "";
        experimental-features = [
          "nix-command"
          "flakes"
        ];
      };
      virtualisation.additionalPaths = [ nixpkgsPath ];

      # A member of the fleet group, who may run the fleet command.
      users.users.alice = {
        isNormalUser = true;
        extraGroups = [ "fleet" ];
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.git
        pkgs.jq
      ];
      virtualisation.memorySize = 2048;
    };
in
{
  inherit name;

  nodes = {
    inherit controller;
  }
  // lib.genAttrs targets target;

  # Three rounds of builds in the targets.
  globalTimeout = 2 * 60 * 60;

  testScript =
    { nodes, ... }:
    prelude nodes + builtins.readFile ./common.py + builtins.readFile script;
}
