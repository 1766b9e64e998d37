"""The hosts a benchmark runs against: real sshd servers or the simulated hosts of `fleet demo`.

Both kinds live outside the process being measured: each sshd host is its own OpenSSH server
(tests/integration/harness/), the simulated hosts are served by `fleet.demo.server` in a
process of its own. A `HostSet` gives every tool the same facts (addresses, ports, the client
key, known_hosts, each host's checkout) and the two knobs of the workload: a new commit to pull
(`new_commit`) and the per-host switch and test durations (`set_durations`), which the stub
nixos-rebuild (`switch-delay`) and the stub systemctl (`system-running-delay`) obey.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fleet.demo.simulation import start_demo
from tests.integration.harness import ClientKey, start_fleet


@dataclass(frozen=True)
class BenchHost:
    name: str
    address: str
    port: int
    user: str
    repo: Path  # the host's checkout of the config repo
    state_dir: Path  # FLEET_STUB_STATE

    @property
    def attr(self) -> str:
        return self.name

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "repo": str(self.repo),
            "attr": self.attr,
        }


@dataclass
class HostSet:
    """n hosts of one kind, ready for any tool."""

    kind: str  # "sshd" or "demo"
    hosts: list[BenchHost]
    identity_file: Path
    known_hosts: Path
    fleet_config: Path
    workdir: Path
    upstream: Path
    scratch: Path  # a clone of upstream to commit from

    def new_commit(self) -> str:
        """Push a new commit to upstream's main: what the next pull fetches and merges."""
        stamp = f"{time.time():.6f}"
        (self.scratch / "bench-stamp").write_text(stamp + "\n")
        _git("-C", str(self.scratch), "add", "bench-stamp")
        _git("-C", str(self.scratch), "commit", "-q", "-m", f"bench {stamp}")
        _git("-C", str(self.scratch), "push", "-q", "origin", "HEAD:refs/heads/main")
        return _git("-C", str(self.scratch), "rev-parse", "HEAD").strip()

    def set_durations(self, switch: Mapping[str, float], test: Mapping[str, float]) -> None:
        """Seconds each host's switch and test take (0 or absent: as fast as the stubs go)."""
        for host in self.hosts:
            for name, seconds in (
                ("switch-delay", switch.get(host.name, 0.0)),
                ("system-running-delay", test.get(host.name, 0.0)),
            ):
                path = host.state_dir / name
                if seconds > 0:
                    path.write_text(f"{seconds:.3f}\n")
                else:
                    path.unlink(missing_ok=True)

    def heads(self) -> dict[str, str]:
        """Each host's checked-out commit (read from the files, no git process)."""
        return {h.name: _head_of(h.repo) for h in self.hosts}

    def hosts_json(self) -> Path:
        """A JSON file describing the hosts (for the floor script)."""
        path = self.workdir / "hosts.json"
        data = {
            "identity_file": str(self.identity_file),
            "known_hosts": str(self.known_hosts),
            "hosts": [h.to_json() for h in self.hosts],
        }
        path.write_text(json.dumps(data, indent=1))
        return path


def _git_env() -> dict[str, str]:
    return {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "fleet bench",
        "GIT_AUTHOR_EMAIL": "bench@fleet.invalid",
        "GIT_COMMITTER_NAME": "fleet bench",
        "GIT_COMMITTER_EMAIL": "bench@fleet.invalid",
    }


def _git(*args: str) -> str:
    argv = ["git", "-c", "safe.directory=*", "-c", "commit.gpgsign=false", *args]
    proc = subprocess.run(argv, env=_git_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def _head_of(repo: Path) -> str:
    git_dir = repo / ".git"
    head = (git_dir / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head
    ref = head[5:]
    loose = git_dir / ref
    if loose.exists():
        return loose.read_text().strip()
    for line in (git_dir / "packed-refs").read_text().splitlines():
        if line.endswith(" " + ref):
            return line.split()[0]
    return ""


def _scratch_clone(upstream: Path, target: Path) -> Path:
    if not target.exists():
        _git("clone", "-q", "-b", "main", str(upstream), str(target))
    return target


@contextlib.contextmanager
def sshd_hosts(workdir: Path, n: int, *, pam: bool = False) -> Iterator[HostSet]:
    """n real OpenSSH servers on 127.0.0.x (the integration tests' harness), run as root.

    The harness runs sshd with `UsePAM no`; with `pam`, each is restarted with `UsePAM yes`
    (this machine's /etc/pam.d/sshd), so that every SSH session costs what a login session
    costs on a stock Debian host."""
    key = ClientKey.generate(workdir / "client-key")
    test_fleet = start_fleet(workdir / "fleet", n, client_key=key, timeout=30)
    try:
        if pam:
            for host in test_fleet.hosts.values():
                config = host.config_path.read_text()
                host.config_path.write_text(config.replace("UsePAM no", "UsePAM yes"))
                host.restart(timeout=30)
        hosts = [
            BenchHost(h.name, h.address, h.port, "root", h.repo, h.stub.path)
            for h in test_fleet.hosts.values()
        ]
        yield HostSet(
            kind="sshd+pam" if pam else "sshd",
            hosts=hosts,
            identity_file=key.private,
            known_hosts=test_fleet.known_hosts,
            fleet_config=test_fleet.config,
            workdir=workdir,
            upstream=test_fleet.upstream,
            scratch=_scratch_clone(test_fleet.upstream, workdir / "scratch"),
        )
    finally:
        test_fleet.close()


@contextlib.contextmanager
def demo_hosts(workdir: Path, n: int) -> Iterator[HostSet]:
    """n simulated hosts served by fleet.demo.server (asyncssh) in its own process."""
    with start_demo(workdir / "demo", n, break_host=None) as demo:
        user = getpass.getuser()
        hosts = [
            BenchHost(m.name, m.address, m.port, user, m.repo, m.state_dir) for m in demo.members
        ]
        yield HostSet(
            kind="demo",
            hosts=hosts,
            identity_file=demo.identity_file,
            known_hosts=demo.known_hosts,
            fleet_config=demo.config_path,
            workdir=workdir,
            upstream=demo.upstream,
            scratch=_scratch_clone(demo.upstream, workdir / "scratch"),
        )
