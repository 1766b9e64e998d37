"""The controllers under test: how each is configured and started against a `HostSet`.

Every tool gets the same hosts, the same client key and known_hosts (strict host key
checking), and runs the same workload: pull (git fetch + merge --ff-only), switch (the stub
nixos-rebuild), test (the stub systemctl is-system-running --wait). fleet runs its own ops for
those (which do more: see docs/benchmarks.md); the peers and the floor run the bare commands.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.hosts import BenchHost, HostSet
from bench.measure import Measurement, cpu_seconds, measure, tree_pids

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
FLEET_PYTHON = sys.executable  # the interpreter running the benchmark: fleet's own venv
PEER_BIN = BENCH_DIR / ".venv" / "bin"  # ansible-core and pyinfra (bench/requirements.txt)


def peer_commands(host: BenchHost) -> list[str]:
    """The three commands of the workload, as the peers and the floor run them."""
    repo = shlex.quote(str(host.repo))
    flake = shlex.quote(f"{host.repo}#{host.attr}")
    return [
        f"git -C {repo} fetch -q origin main && git -C {repo} merge -q --ff-only FETCH_HEAD",
        f"nixos-rebuild switch --flake {flake}",
        "systemctl is-system-running --wait",
    ]


@dataclass
class Result:
    tool: str
    mode: str  # lockstep | streaming
    measurement: Measurement
    ok: bool
    note: str = ""


@dataclass(frozen=True)
class Tool:
    """One controller configuration: a name in the table, its mode, and how to run it."""

    name: str
    mode: str
    run: Callable[[HostSet, Path], Result] = field(repr=False)
    available: Callable[[], str | None] = field(default=lambda: None, repr=False)  # why not


def _base_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HOME=str(home), NO_COLOR="1", TERM="dumb", LANG="C.UTF-8")
    return env


# ---------------------------------------------------------------------------------------------
# fleet


def _fleet(mode: str) -> Callable[[HostSet, Path], Result]:
    def run(hosts: HostSet, rundir: Path) -> Result:
        env = _base_env(hosts.workdir / "fleet-home")
        env["PYTHONPATH"] = str(REPO_ROOT)
        argv = [
            FLEET_PYTHON, "-m", "fleet", "--config", str(hosts.fleet_config),
            "--state-dir", str(hosts.workdir / "fleet-state"), "do-all", "--json", "--mode", mode,
        ]  # fmt: skip
        out, err = rundir / "stdout", rundir / "stderr"
        m = measure(argv, env=env, cwd=hosts.workdir, stdout=out, stderr=err)
        note = ""
        try:
            status = json.loads(out.read_text())["status"]
        except (ValueError, KeyError):
            status, note = "?", _last_line(err)
        ok = m.returncode == 0 and status == "COMPLETE"
        return Result(f"fleet {mode}", mode, m, ok, note or ("" if ok else status))

    return run


# ---------------------------------------------------------------------------------------------
# The floor (bench/floor.py)


def _floor(strategy: str, mode: str, commands: str = "bare") -> Callable[[HostSet, Path], Result]:
    def run(hosts: HostSet, rundir: Path) -> Result:
        env = _base_env(hosts.workdir / "floor-home")
        env["PYTHONPATH"] = str(REPO_ROOT)
        argv = [
            FLEET_PYTHON, str(BENCH_DIR / "floor.py"), str(hosts.hosts_json()),
            "--strategy", strategy, "--mode", mode,
            "--commands", commands, "--config", str(hosts.fleet_config),
        ]  # fmt: skip
        out, err = rundir / "stdout", rundir / "stderr"
        m = measure(argv, env=env, cwd=hosts.workdir, stdout=out, stderr=err)
        ok = m.returncode == 0
        note = "" if ok else (_last_line(out) or _last_line(err))
        name = f"floor {strategy} {mode}" if commands == "bare" else f"floor fleet-scripts {mode}"
        return Result(name, mode, m, ok, note)

    return run


# ---------------------------------------------------------------------------------------------
# Ansible


def _ansible_available() -> str | None:
    return None if (PEER_BIN / "ansible-playbook").exists() else "bench/.venv has no ansible-core"


ANSIBLE_CFG = """\
[defaults]
inventory = {inventory}
forks = {forks}
strategy = linear
gathering = explicit
host_key_checking = True
interpreter_python = /usr/bin/python3
retry_files_enabled = False
local_tmp = {tmp}
remote_tmp = /tmp/.ansible-bench
deprecation_warnings = False

[ssh_connection]
pipelining = True
control_path_dir = {cp}
ssh_args = -F /dev/null -o ControlMaster=auto -o ControlPersist=60s -o IdentitiesOnly=yes \
-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes -o BatchMode=yes
"""

PLAYBOOK = """\
- hosts: all
  gather_facts: false
  strategy: linear
  tasks:
    - name: pull
      ansible.builtin.shell: "{{ pull }}"
    - name: switch
      ansible.builtin.shell: "{{ switch }}"
    - name: test
      ansible.builtin.shell: "{{ test }}"
"""


def _ansible(hosts: HostSet, rundir: Path) -> Result:
    # a short directory: ControlPath sockets must fit in 108 bytes
    cp = Path(f"/tmp/fbcp-{os.getpid()}")
    shutil.rmtree(cp, ignore_errors=True)
    cp.mkdir(mode=0o700)
    tmp = rundir / "tmp"
    tmp.mkdir(exist_ok=True)
    inventory = rundir / "inventory.ini"
    lines = ["[all]"]
    for h in hosts.hosts:
        pull, switch, test = peer_commands(h)
        values = {
            "ansible_host": h.address,
            "ansible_port": str(h.port),
            "ansible_user": h.user,
            "ansible_ssh_private_key_file": str(hosts.identity_file),
            "pull": pull,
            "switch": switch,
            "test": test,
        }
        lines.append(h.name + " " + " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items()))
    inventory.write_text("\n".join(lines) + "\n")
    cfg = rundir / "ansible.cfg"
    cfg.write_text(
        ANSIBLE_CFG.format(
            inventory=inventory,
            forks=len(hosts.hosts),
            tmp=tmp,
            cp=cp,
            known_hosts=hosts.known_hosts,
        )
    )
    playbook = rundir / "playbook.yml"
    playbook.write_text(PLAYBOOK)
    env = _base_env(hosts.workdir / "ansible-home")
    env.update(ANSIBLE_CONFIG=str(cfg), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    argv = [str(PEER_BIN / "ansible-playbook"), str(playbook)]
    out, err = rundir / "stdout", rundir / "stderr"
    m = measure(argv, env=env, cwd=rundir, stdout=out, stderr=err)
    masters_cpu = _stop_control_masters(cp, env)
    shutil.rmtree(cp, ignore_errors=True)
    m = Measurement(m.wall, m.cpu + masters_cpu, m.rss_mb, m.tree_mb, m.returncode, m.machine)
    ok = m.returncode == 0
    return Result("ansible (linear)", "lockstep", m, ok, "" if ok else _failed_line(out))


def _stop_control_masters(cp: Path, env: Mapping[str, str]) -> float:
    """The ControlPersist masters outlive ansible-playbook: read their CPU, then stop them."""
    cpu = 0.0
    marker = str(cp).encode()
    for pid in tree_pids(1):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ssh\0") and marker in cmdline:
            cpu += cpu_seconds(pid)
    for sock in cp.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"],
            env=dict(env), capture_output=True, check=False, timeout=10,
        )  # fmt: skip
    return cpu


# ---------------------------------------------------------------------------------------------
# pyinfra


def _pyinfra_available() -> str | None:
    return None if (PEER_BIN / "pyinfra").exists() else "bench/.venv has no pyinfra"


PYINFRA_DEPLOY = """\
from pyinfra import host
from pyinfra.operations import server

server.shell(name="pull", commands=[host.data.pull])
server.shell(name="switch", commands=[host.data.switch])
server.shell(name="test", commands=[host.data.test])
"""


def _pyinfra(hosts: HostSet, rundir: Path) -> Result:
    entries = []
    for h in hosts.hosts:
        pull, switch, test = peer_commands(h)
        entries.append(
            (
                h.name,
                {
                    "ssh_hostname": h.address,
                    "ssh_port": h.port,
                    "ssh_user": h.user,
                    "ssh_key": str(hosts.identity_file),
                    "ssh_known_hosts_file": str(hosts.known_hosts),
                    "ssh_strict_host_key_checking": "yes",
                    "pull": pull,
                    "switch": switch,
                    "test": test,
                },
            )
        )
    inventory = rundir / "inventory.py"
    inventory.write_text(f"hosts = {entries!r}\n")
    deploy = rundir / "deploy.py"
    deploy.write_text(PYINFRA_DEPLOY)
    env = _base_env(hosts.workdir / "pyinfra-home")
    argv = [
        str(PEER_BIN / "pyinfra"), str(inventory), str(deploy),
        "--parallel", str(len(hosts.hosts)), "--yes",
    ]  # fmt: skip
    out, err = rundir / "stdout", rundir / "stderr"
    m = measure(argv, env=env, cwd=rundir, stdout=out, stderr=err)
    ok = m.returncode == 0
    return Result("pyinfra", "lockstep", m, ok, "" if ok else _last_line(err) or _last_line(out))


# ---------------------------------------------------------------------------------------------


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _failed_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    bad = [ln for ln in lines if "fatal:" in ln or "UNREACHABLE" in ln or "FAILED" in ln]
    return (bad[0] if bad else (lines[-1] if lines else ""))[:200]


TOOLS: dict[str, Tool] = {
    "fleet-lockstep": Tool("fleet lockstep", "lockstep", _fleet("lockstep")),
    "fleet-streaming": Tool("fleet streaming", "streaming", _fleet("streaming")),
    "floor-shell-lockstep": Tool("floor shell lockstep", "lockstep", _floor("shell", "lockstep")),
    "floor-shell-streaming": Tool(
        "floor shell streaming", "streaming", _floor("shell", "streaming")
    ),
    "floor-sessions-lockstep": Tool(
        "floor sessions lockstep", "lockstep", _floor("sessions", "lockstep")
    ),
    "floor-sessions-streaming": Tool(
        "floor sessions streaming", "streaming", _floor("sessions", "streaming")
    ),
    "floor-fleet-scripts-lockstep": Tool(
        "floor fleet-scripts lockstep", "lockstep", _floor("shell", "lockstep", "fleet")
    ),
    "floor-fleet-scripts-streaming": Tool(
        "floor fleet-scripts streaming", "streaming", _floor("shell", "streaming", "fleet")
    ),
    "ansible": Tool("ansible (linear)", "lockstep", _ansible, _ansible_available),
    "pyinfra": Tool("pyinfra", "lockstep", _pyinfra, _pyinfra_available),
}
