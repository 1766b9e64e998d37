{
  config,
  lib,
  pkgs,
  utils,
  ...
}:
let
  inherit (lib) mkOption types;

  cfg = config.services.fleet;
  settingsFormat = pkgs.formats.toml { };
  stateDir = "/var/lib/fleet";

  # Options left at null are not written: TOML has no null, and fleet's own default applies.
  configFile = settingsFormat.generate "fleet.toml" (
    lib.filterAttrsRecursive (_: value: value != null) cfg.settings
  );

  builtinPipelines = [
    "do-all"
    "merge-deploy"
    "update-agent"
    "force-update"
  ];
  knownPipelines = builtinPipelines ++ lib.attrNames (cfg.settings.pipelines or { });

  # "127.0.0.1:8470", "[::1]:8470", "localhost:8470" -> host and port
  listenParts = builtins.match "(.*):([0-9]+)" cfg.listen;
  listenHost = lib.removePrefix "[" (lib.removeSuffix "]" (lib.head listenParts));
  listenPort = lib.toInt (lib.last listenParts);
  listenIsLoopback =
    listenHost == "localhost" || listenHost == "::1" || lib.hasPrefix "127." listenHost;

  # git (the controller repo: clone, merge-pr, bump-flake) authenticates with the same key and
  # trusts the same host keys as fleet itself; git runs this through a shell, which expands
  # $CREDENTIALS_DIRECTORY.
  gitSshCommand = lib.concatStringsSep " " [
    (lib.getExe' pkgs.openssh "ssh")
    "-i $CREDENTIALS_DIRECTORY/ssh-key"
    "-o IdentitiesOnly=yes"
    "-o UserKnownHostsFile=${stateDir}/known_hosts"
    "-o GlobalKnownHostsFile=/etc/ssh/ssh_known_hosts"
    "-o StrictHostKeyChecking=${
      if cfg.settings.ssh.host_key_policy == "accept-new" then "accept-new" else "yes"
    }"
  ];

  # Runs its arguments with the SSH key (the unit's credential) in an ssh-agent of the unit's
  # own, which fleet logs in with (fleet.toml names no key file: the credential's path differs
  # from unit to unit). The agent ends with the unit; the key is never written anywhere.
  withSshKey = pkgs.writeShellScript "fleet-with-ssh-key" ''
    set -eu
    eval "$(${lib.getExe' pkgs.openssh "ssh-agent"} -s)" >/dev/null
    ${lib.getExe' pkgs.openssh "ssh-add"} -q - <"$CREDENTIALS_DIRECTORY/ssh-key"
    exec "$@"
  '';

  # The environment of every fleet process on this host: the service, the schedules and the
  # CLI (through the wrapper below), so that they share one config, one state store and one
  # set of host locks.
  environment = {
    FLEET_CONFIG = "${configFile}";
    FLEET_STATE_DIR = stateDir;
    HOME = stateDir;
    GIT_SSH_COMMAND = gitSshCommand;
  };

  # How every fleet process on this host runs: as the fleet user, with the SSH key as a
  # credential (never in the store), sandboxed.
  execConfig = {
    User = "fleet";
    Group = "fleet";
    StateDirectory = "fleet";
    StateDirectoryMode = "0750";
    WorkingDirectory = stateDir;
    UMask = "0027";
    LoadCredential = [ "ssh-key:${cfg.sshKeyFile}" ];

    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
    SystemCallErrorNumber = "EPERM";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
  };

  # execConfig as `systemd-run --property=...` arguments (a list gives one property each).
  runProperties =
    let
      render = item: if lib.isBool item then lib.boolToString item else item;
      properties = removeAttrs execConfig [
        "User"
        "Group"
      ];
    in
    lib.concatLists (
      lib.mapAttrsToList (
        name: value: map (item: "--property=${name}=${render item}") (lib.toList value)
      ) properties
    );

  # The default PATH of a NixOS service, for the CLI's transient units.
  servicePath = lib.makeBinPath [
    pkgs.coreutils
    pkgs.findutils
    pkgs.gnugrep
    pkgs.gnused
    config.systemd.package
  ];

  # The fleet command on this host's PATH. It runs the CLI the way the service runs: as the
  # fleet user in a transient unit that loads the same credential, with the same environment.
  fleetCli = pkgs.writeShellApplication {
    name = "fleet";
    # id and readlink, whatever PATH sudo leaves
    runtimeInputs = [ pkgs.coreutils ];
    text = ''
      if [ -r "''${CREDENTIALS_DIRECTORY:-/nonexistent}/ssh-key" ]; then
        # Already in a fleet unit: fleet.service, a schedule, or the transient unit below.
        exec ${withSshKey} ${lib.getExe cfg.package} "$@"
      fi

      if [ "$(id -u)" != 0 ]; then
        # Members of the fleet group may run fleet (see security.sudo.extraRules).
        if [ -x /run/wrappers/bin/sudo ]; then
          exec /run/wrappers/bin/sudo -- "$(readlink -f "$0")" "$@"
        fi
        echo "fleet: run this as root (sudo is not enabled on this host)" >&2
        exit 1
      fi

      if [ -t 0 ] && [ -t 1 ]; then io=--pty; else io=--pipe; fi
      # shellcheck disable=SC2016 # GIT_SSH_COMMAND's $CREDENTIALS_DIRECTORY is the unit's
      exec ${lib.getExe' config.systemd.package "systemd-run"} \
        --quiet --wait --collect --service-type=exec "$io" \
        --uid=fleet --gid=fleet \
        ${lib.escapeShellArgs runProperties} \
        ${
          lib.escapeShellArgs (
            lib.mapAttrsToList (name: value: "--setenv=${name}=${value}") (
              environment // { PATH = servicePath; }
            )
          )
        } \
        -- ${withSshKey} ${lib.getExe cfg.package} "$@"
    '';
  };

  # The dashboard's token, when it is not generated: a credential of fleet.service (systemd
  # expands the variable).
  tokenCredential = lib.optional (cfg.tokenFile != null) "token:${cfg.tokenFile}";
  tokenArgs =
    lib.optionalString (cfg.tokenFile != null) " --token-file \${CREDENTIALS_DIRECTORY}/token";

  # Made on the first start: a clone of controllerRepoUrl for merge-pr and bump-flake. A
  # failure (the git server is down) leaves the dashboard up; the next start tries again.
  cloneControllerRepo = pkgs.writeShellScript "fleet-clone-controller-repo" ''
    repo=${lib.escapeShellArg cfg.settings.controller.repo}
    url=${lib.escapeShellArg cfg.controllerRepoUrl}
    git=${lib.getExe pkgs.git}
    [ -e "$repo/.git" ] && exit 0
    rm -rf "$repo.tmp"
    if ! "$git" clone --quiet -- "$url" "$repo.tmp"; then
      echo "fleet: could not clone $url into $repo; merge-pr and bump-flake need it (retried on the next start)"
      rm -rf "$repo.tmp"
      exit 0
    fi
    "$git" -C "$repo.tmp" config user.name ${lib.escapeShellArg cfg.settings.controller.git_name}
    "$git" -C "$repo.tmp" config user.email ${lib.escapeShellArg cfg.settings.controller.git_email}
    mv "$repo.tmp" "$repo"
    echo "fleet: cloned $url into $repo"
  '';

  settingsSubmodule =
    options:
    types.submodule {
      freeformType = settingsFormat.type;
      inherit options;
    };

  scheduleSubmodule = types.submodule {
    options = {
      pipeline = mkOption {
        type = types.str;
        example = "do-all";
        description = "The pipeline to run: a built-in one or one of [](#opt-services.fleet.settings).pipelines.";
      };
      on = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "tag:web";
        description = "The hosts to run it on (`fleet run --on`); all hosts when null.";
      };
      onCalendar = mkOption {
        type = types.str;
        example = "Mon..Fri 04:00";
        description = "When to run it, as a calendar event (see {manpage}`systemd.time(7)`).";
      };
    };
  };
in
{
  options.services.fleet = {
    enable = lib.mkEnableOption "fleet, a controller that runs deployment pipelines (pull, switch, test) across NixOS hosts over SSH, with its dashboard";

    # The flake's overlay adds it as fleet-deploy (pkgs.fleet is fleetdm's Fleet server); the
    # flake's nixosModules.fleet sets it without the overlay.
    package = lib.mkPackageOption pkgs "fleet-deploy" { };

    settings = mkOption {
      default = { };
      description = ''
        fleet's configuration, written to the {file}`fleet.toml` that the service and the
        {command}`fleet` command on this host read. See fleet's documentation for every key;
        the most common ones are declared below.
      '';
      example = lib.literalExpression ''
        {
          defaults.user = "deploy";
          defaults.sudo = true;
          hosts.web1 = { address = "web1.example.org"; tags = [ "web" ]; };
          hosts.db1.address = "10.0.0.5";
          pipelines.deploy-web = { ops = [ "pull" "switch" "test" ]; description = "Web only"; };
        }
      '';
      type = settingsSubmodule {
        ssh = mkOption {
          default = { };
          description = "How fleet authenticates to hosts and checks their host keys.";
          type = settingsSubmodule {
            known_hosts = mkOption {
              type = types.listOf types.str;
              default = [
                "${stateDir}/known_hosts"
                "/etc/ssh/ssh_known_hosts"
              ];
              description = ''
                Known-hosts files: the state directory's (where `accept-new` records new hosts)
                and the system's, so that {option}`programs.ssh.knownHosts` works.
              '';
            };
            host_key_policy = mkOption {
              type = types.enum [
                "strict"
                "accept-new"
              ];
              default = "strict";
              description = "`strict` refuses hosts whose key is not known; `accept-new` records the key of a new host and refuses changed ones.";
            };
            connect_timeout = mkOption {
              type = types.nullOr types.number;
              default = null;
              example = 10;
              description = "Seconds to wait for a host's SSH connection; fleet's default when null.";
            };
          };
        };

        defaults = mkOption {
          default = { };
          description = "Settings of every host, unless the host sets its own.";
          type = settingsSubmodule {
            user = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "deploy";
              description = "The SSH user on the hosts (fleet's default is root).";
            };
            sudo = mkOption {
              type = types.nullOr types.bool;
              default = null;
              description = "Whether to run privileged ops with `sudo -n` (for a user other than root).";
            };
            repo = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "/etc/nixos";
              description = "The git checkout of the config flake on each host.";
            };
            branch = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "main";
              description = "The branch the hosts pull.";
            };
          };
        };

        hosts = mkOption {
          default = { };
          description = "The hosts of the fleet, by name (the name is also the flake attribute built for it).";
          type = types.attrsOf (
            types.submodule (
              { name, ... }:
              {
                freeformType = settingsFormat.type;
                options = {
                  address = mkOption {
                    type = types.str;
                    default = name;
                    defaultText = lib.literalExpression "<name>";
                    description = "The address (or ~/.ssh/config alias) fleet connects to.";
                  };
                  tags = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                    description = "Tags to select hosts by (`--on tag:web`).";
                  };
                };
              }
            )
          );
        };

        controller = mkOption {
          default = { };
          description = "The controller's checkout of the config repository, for merge-pr and bump-flake.";
          type = settingsSubmodule {
            repo = mkOption {
              type = types.nullOr types.str;
              default = if cfg.controllerRepoUrl != null then "${stateDir}/repo" else null;
              defaultText = lib.literalExpression ''if controllerRepoUrl != null then "${stateDir}/repo" else null'';
              description = "Where the checkout is.";
            };
            git_name = mkOption {
              type = types.str;
              default = "fleet";
              description = "The author of the commits fleet makes (merges, flake.lock bumps).";
            };
            git_email = mkOption {
              type = types.str;
              default = "fleet@localhost";
              description = "The e-mail address of that author.";
            };
          };
        };
      };
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = configFile;
      defaultText = lib.literalMD "the {file}`fleet.toml` rendered from [](#opt-services.fleet.settings)";
      description = "The rendered {file}`fleet.toml` (what `FLEET_CONFIG` points at).";
    };

    sshKeyFile = mkOption {
      type = types.externalPath;
      example = "/run/secrets/fleet-ssh-key";
      description = ''
        The private SSH key fleet logs in to the hosts with, and pushes to the controller
        repository with. It stays where it is: each fleet unit reads it as a systemd credential
        (`LoadCredential`, so the file may be readable by root only) and hands it to fleet
        through an ssh-agent of its own. It is never copied into the Nix store.
      '';
    };

    controllerRepoUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "git@github.com:example/nixos-config.git";
      description = ''
        The config repository that merge-pr and bump-flake work on. The service clones it
        into {file}`/var/lib/fleet/repo` on its first start and pushes to it with
        [](#opt-services.fleet.sshKeyFile).
      '';
    };

    listen = mkOption {
      type = types.strMatching "(\\[[0-9A-Fa-f:.]+]|[A-Za-z0-9.-]+):[0-9]+";
      default = "127.0.0.1:8470";
      example = "0.0.0.0:8470";
      description = "The address and port of the dashboard.";
    };

    tokenFile = mkOption {
      type = types.nullOr types.externalPath;
      default = null;
      example = "/run/secrets/fleet-dashboard-token";
      description = ''
        A file holding the dashboard's API token (read as a systemd credential). When null,
        the service generates a token on its first start into {file}`/var/lib/fleet/token`
        (mode 0600) and logs where it is, never the token itself.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to open the dashboard's port in the firewall.";
    };

    schedules = mkOption {
      type = types.attrsOf scheduleSubmodule;
      default = { };
      example = lib.literalExpression ''
        {
          nightly = { pipeline = "do-all"; onCalendar = "03:00"; };
          web-updates = { pipeline = "update-agent"; on = "tag:web"; onCalendar = "Sun 05:00"; };
        }
      '';
      description = "Pipelines to run on a timer (`fleet run PIPELINE --on ON`).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = listenIsLoopback || cfg.tokenFile != null;
        message = ''
          services.fleet.listen = "${cfg.listen}" is not a loopback address, so other hosts can
          reach the dashboard: set services.fleet.tokenFile to a token you manage (a generated
          one would sit only in ${stateDir}/token on this host).
        '';
      }
    ]
    ++ lib.mapAttrsToList (name: schedule: {
      assertion = lib.elem schedule.pipeline knownPipelines;
      message = ''
        services.fleet.schedules.${name}.pipeline = "${schedule.pipeline}" names no pipeline
        (known: ${lib.concatStringsSep ", " knownPipelines}).
      '';
    }) cfg.schedules
    ++ lib.mapAttrsToList (name: _: {
      assertion = builtins.match "[A-Za-z0-9_-]+" name != null;
      message = "services.fleet.schedules.${name}: a schedule's name may use only letters, digits, '-' and '_' (it names a systemd unit).";
    }) cfg.schedules;

    warnings = lib.optional (cfg.openFirewall && listenIsLoopback) ''
      services.fleet.openFirewall opens port ${toString listenPort}, but the dashboard listens
      on ${cfg.listen} only.
    '';

    users.users.fleet = {
      isSystemUser = true;
      group = "fleet";
      home = stateDir;
      description = "fleet deployment controller";
    };
    users.groups.fleet = { };

    environment.systemPackages = [ fleetCli ];

    security.sudo.extraRules = lib.mkIf config.security.sudo.enable [
      {
        groups = [ "fleet" ];
        runAs = "root";
        commands = [
          {
            command = lib.getExe fleetCli;
            options = [ "NOPASSWD" ];
          }
        ];
      }
    ];

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ listenPort ];

    systemd.services = {
      fleet = {
        description = "fleet dashboard and pipeline runner";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        inherit environment;
        # fleet may deploy this very host, and switching to a new configuration must not kill
        # the run that does it: the pipeline's restart op restarts the service.
        restartIfChanged = false;
        serviceConfig = execConfig // {
          Type = "exec";
          ExecStartPre = lib.optional (cfg.controllerRepoUrl != null) "${cloneControllerRepo}";
          ExecStart =
            utils.escapeSystemdExecArgs [
              "${withSshKey}"
              (lib.getExe cfg.package)
              "serve"
              "--listen"
              cfg.listen
            ]
            + tokenArgs;
          LoadCredential = execConfig.LoadCredential ++ tokenCredential;
          RuntimeDirectory = "fleet";
          RuntimeDirectoryMode = "0750";
          Restart = "on-failure";
          RestartSec = 5;
        };
      };
    }
    // lib.mapAttrs' (
      name: schedule:
      lib.nameValuePair "fleet-schedule-${name}" {
        description = "fleet: run ${schedule.pipeline} (schedule ${name})";
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        inherit environment;
        restartIfChanged = false;
        serviceConfig = execConfig // {
          Type = "oneshot";
          ExecStart = utils.escapeSystemdExecArgs (
            [
              "${withSshKey}"
              (lib.getExe cfg.package)
              "run"
              schedule.pipeline
            ]
            ++ lib.optionals (schedule.on != null) [
              "--on"
              schedule.on
            ]
          );
        };
      }
    ) cfg.schedules;

    systemd.timers = lib.mapAttrs' (
      name: schedule:
      lib.nameValuePair "fleet-schedule-${name}" {
        description = "fleet: run ${schedule.pipeline} at ${schedule.onCalendar}";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = schedule.onCalendar;
          Persistent = true;
        };
      }
    ) cfg.schedules;
  };
}
