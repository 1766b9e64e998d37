"""One simulated host: a real OpenSSH server (`SshdHost`), its keys and its sshd_config.

Each host's sshd runs as root with its own config, host key and log under hosts/<name>/sshd/,
and sets PATH, HOME, FLEET_STUB_STATE and FLEET_STUB_HOST for its sessions (see the package doc).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.integration.harness.processes import (
    HarnessError,
    kill_and_wait,
    pids_with_env,
    pids_with_sockets,
    signal_pids,
    tcp_inodes,
    wait_all,
    wait_until,
)
from tests.integration.harness.stubs import StubState

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SSHD = shutil.which("sshd", path=SYSTEM_PATH) or "/usr/sbin/sshd"


def missing_requirements() -> list[str]:
    """What this machine lacks to run the harness (empty when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (sshd must run as root and accept root logins)")
    missing += [tool for tool in (SSHD, "ssh", "ssh-keygen", "git") if not shutil.which(tool)]
    return missing


# ---------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class ClientKey:
    """The key pair fleet (and the test's ssh client) authenticates with."""

    private: Path
    public: Path

    @classmethod
    def generate(cls, directory: Path, name: str = "id_ed25519") -> ClientKey:
        directory.mkdir(parents=True, exist_ok=True)
        private = directory / name
        wait_all([(keygen_popen(private), "ssh-keygen (client key)")])
        return cls(private, private.with_name(name + ".pub"))


def keygen_popen(path: Path) -> subprocess.Popen[bytes]:
    """Start generating an ed25519 key pair at `path` (replacing one that is there)."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def openssh_version() -> tuple[int, int]:
    out = subprocess.run([SSHD, "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stderr + out.stdout)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# One host: a real sshd


class SshdHost:
    """One simulated host: its own sshd, host key, checkout, stub state and run dir."""

    def __init__(
        self,
        name: str,
        *,
        address: str,
        port: int,
        root: Path,
        authorized_keys: Path,
        path: str,
        openssh: tuple[int, int] = (0, 0),
    ) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.root = root
        self.repo = root / "repo"
        self.stub = StubState(root / "state")
        self.run_dir = root / "run"
        self.home = root / "home"
        self.sshd_dir = root / "sshd"
        self.config_path = self.sshd_dir / "sshd_config"
        self.host_key = self.sshd_dir / "ssh_host_ed25519_key"
        self.pid_file = self.sshd_dir / "sshd.pid"
        self.log_path = self.sshd_dir / "sshd.log"
        self.authorized_keys = authorized_keys
        self.path = path
        self.openssh = openssh
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"SshdHost({self.name!r}, {self.address}:{self.port}, pid={self.pid})"

    @property
    def system_profile(self) -> Path:
        return self.stub.file("current-system")

    @property
    def pid(self) -> int | None:
        """The listener's pid while it runs (also while SIGSTOPped)."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.address}]:{self.port}"

    def host_key_line(self) -> str:
        """This host's known_hosts line."""
        kind, key = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2]
        return f"{self.known_hosts_name} {kind} {key}"

    def prepare(self) -> subprocess.Popen[bytes]:
        """Create the host's directories and config; start generating its host key."""
        for directory in (self.stub.path, self.run_dir, self.home, self.sshd_dir):
            directory.mkdir(parents=True, exist_ok=True)
        (self.home / ".gitconfig").write_text("[safe]\n\tdirectory = *\n")
        self.write_sshd_config()
        return keygen_popen(self.host_key)

    def write_sshd_config(self) -> None:
        env = {
            "PATH": self.path,
            "HOME": str(self.home),
            "FLEET_STUB_STATE": str(self.stub.path),
            "FLEET_STUB_HOST": self.name,
        }
        lines = [
            f"# sshd of the fleet test host {self.name}",
            f"ListenAddress {self.address}:{self.port}",
            "AddressFamily inet",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitUserRC no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "MaxStartups 200:30:400",
            "MaxSessions 200",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            "SetEnv " + " ".join(f'"{k}={v}"' for k, v in env.items()),
        ]
        if self.openssh >= (9, 8):
            lines.append("PerSourcePenalties no")  # killed sessions must not get us banned
        self.config_path.write_text("\n".join(lines) + "\n")

    # --- the listener

    def launch(self) -> None:
        """Start sshd without waiting for it (see `wait_ready`)."""
        if self.pid is not None:
            raise HarnessError(f"{self.name}: sshd already runs (pid {self.pid})")
        self.reap()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": SYSTEM_PATH},
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 10) -> None:
        """Wait until sshd answers with its banner; fail early if it exited."""

        def ready() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                raise HarnessError(f"{self.name}: sshd exited: {self.log_tail()}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1) as sock:
                    return sock.recv(64).startswith(b"SSH-")
            except OSError:
                return False

        wait_until(ready, timeout, f"sshd of {self.name} on {self.address}:{self.port}")

    def start(self, timeout: float = 10) -> None:
        self.launch()
        self.wait_ready(timeout)

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM the listener, as `systemctl stop sshd` would: sessions keep running."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self.reap()

    def kill(self, *, sessions: bool = False) -> None:
        """SIGKILL the listener (and, with `sessions`, every session: connections drop)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.reap()
        if sessions:
            self.kill_sessions()

    def reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP the listener: new connections hang (the kernel still completes the TCP
        handshake, no banner comes); established sessions go on."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 10) -> None:
        """Stop and start the listener (same port, same config); sessions survive."""
        self.stop()
        self.start(timeout)

    def change_host_key(self, timeout: float = 10) -> None:
        """Generate a new host key and restart sshd with it (known_hosts is left as it was)."""
        wait_all([(keygen_popen(self.host_key), f"ssh-keygen for {self.name}")])
        self.restart(timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # --- sessions and other processes

    def session_pids(self) -> list[int]:
        """The sshd processes serving this host's connections (not the listener)."""
        inodes = tcp_inodes(self.address, self.port, listening=False)
        return [p for p in pids_with_sockets(inodes) if p != self.pid] if inodes else []

    def signal_sessions(self, sig: signal.Signals) -> list[int]:
        pids = self.session_pids()
        signal_pids(pids, sig)
        return pids

    def kill_sessions(self, sig: signal.Signals = signal.SIGKILL) -> list[int]:
        """Kill the session processes: every connection drops at once; the commands they ran
        go on (they run in their own sessions), as after a network failure. Returns the pids."""
        pids = self.signal_sessions(sig)
        if sig == signal.SIGKILL:
            kill_and_wait(pids)
        return pids

    def pause_sessions(self) -> list[int]:
        """SIGSTOP the session processes: established connections hang silently."""
        return self.signal_sessions(signal.SIGSTOP)

    def resume_sessions(self) -> list[int]:
        return self.signal_sessions(signal.SIGCONT)

    def stub_pids(self) -> list[int]:
        """Processes started in this host's sessions (they inherit FLEET_STUB_STATE)."""
        return pids_with_env([f"FLEET_STUB_STATE={self.stub.path}"])

    def processes(self) -> list[int]:
        """Every live process of this host: listener, sessions, commands, detached ops."""
        listener = [self.pid] if self.pid is not None else []
        others = tcp_inodes(self.address, self.port, listening=True)
        holders = pids_with_sockets(others) if others else []  # a listener we lost track of
        return sorted({*listener, *holders, *self.session_pids(), *self.stub_pids()})


def wait_ready_or_move(host: SshdHost, timeout: float, attempts: int = 3) -> None:
    """Wait for sshd; if another process took its port meanwhile, move to a new one."""
    for attempt in range(attempts):
        try:
            host.wait_ready(timeout)
            return
        except HarnessError:
            if attempt == attempts - 1 or "already in use" not in host.log_tail():
                raise
        host.reap()
        host.port = free_port(host.address)
        host.write_sshd_config()
        host.launch()
