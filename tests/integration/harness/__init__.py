"""The integration-test harness: real OpenSSH servers, real git repos, stub programs.

A `TestFleet` is n simulated NixOS hosts on this machine, each one a real `sshd` (as root, on
127.0.0.(2+i) or, in single-address mode, on 127.0.0.1 with its own port) whose sessions see:

    PATH              fleet/demo/stubs (nixos-rebuild, systemctl), then <root>/bin (a sudo shim
                      that keeps the environment), then the system's directories
    HOME              <root>/hosts/<name>/home, so that root's real ~/.bashrc (which bash
                      reads for ssh commands) cannot change PATH; it holds a .gitconfig
    FLEET_STUB_STATE  <root>/hosts/<name>/state: the stubs' state, calls.log, generations/,
                      current-system (the host's system_profile); see `StubState`
    FLEET_STUB_HOST   the host's name

Files of a fleet rooted at <root>:

    upstream.git                   the bare config repo (branch main) every host pulls from
    work/                          a scratch clone the harness commits from (`push_change`)
    controller/                    a clone for controller ops ([controller] repo)
    hosts/<name>/repo              the host's checkout (remote origin -> upstream.git)
    hosts/<name>/{state,run,home}  stub state, fleet's run_dir, HOME
    hosts/<name>/sshd/             sshd_config, host key, pid file, sshd.log
    client/id_ed25519, authorized_keys, known_hosts, fleet.toml, state/ (FLEET_STATE_DIR)

`TestFleet.close()` kills every process a host owns (the listener, its sessions and whatever
runs with the host's FLEET_STUB_STATE, detached ops included) and fails if one survives.

Modules:

    processes.py  HarnessError; running commands, `wait_until`; processes found through /proc
    toml.py       TOML values and tables (fleet.toml, the tests' own tables)
    git.py        the harness's git commands; upstream.git, its initial tree and the clones
    stubs.py      `StubState` (what the stubs record, the knobs they obey) and the sudo shim
    sshd.py       `SshdHost` (one host's sshd), `ClientKey`, ports, `missing_requirements`
    fleet.py      `TestFleet`, `start_fleet`, `FleetFactory`

The names tests use are re-exported here: `from tests.integration.harness import TestFleet`.
"""

from tests.integration.harness.fleet import FLEET_COMMAND, FleetFactory, TestFleet, start_fleet
from tests.integration.harness.git import FLAKE_NIX, git, git_env, host_configuration
from tests.integration.harness.processes import (
    HarnessError,
    descendants,
    is_alive,
    kill_and_wait,
    parents,
    pids_with_env,
    pids_with_sockets,
    signal_pids,
    wait_until,
)
from tests.integration.harness.sshd import (
    SSHD,
    SYSTEM_PATH,
    ClientKey,
    SshdHost,
    free_port,
    missing_requirements,
    openssh_version,
)
from tests.integration.harness.stubs import DEFAULT_UNITS, STUBS_DIR, SUDO_SHIM, StubState
from tests.integration.harness.toml import TomlValue, toml_table, toml_value

__all__ = [
    "DEFAULT_UNITS",
    "FLAKE_NIX",
    "FLEET_COMMAND",
    "SSHD",
    "STUBS_DIR",
    "SUDO_SHIM",
    "SYSTEM_PATH",
    "ClientKey",
    "FleetFactory",
    "HarnessError",
    "SshdHost",
    "StubState",
    "TestFleet",
    "TomlValue",
    "descendants",
    "free_port",
    "git",
    "git_env",
    "host_configuration",
    "is_alive",
    "kill_and_wait",
    "missing_requirements",
    "openssh_version",
    "parents",
    "pids_with_env",
    "pids_with_sockets",
    "signal_pids",
    "start_fleet",
    "toml_table",
    "toml_value",
    "wait_until",
]
