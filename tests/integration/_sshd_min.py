"""A minimal real OpenSSH server for the transport's tests (the full harness is harness/).

`MiniSshd.start(root)` runs `/usr/sbin/sshd -D -e` as root on 127.0.0.2 and a free port, with
a fresh ed25519 host key and one authorized client key, all under `root`; its log (LogLevel
VERBOSE: one "Starting session" line per SSH session) is `root/sshd.log`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ADDRESS = "127.0.0.2"
SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/sshd"


def keygen(path: Path) -> str:
    """Generate an ed25519 key pair at `path`; return the public key line (type + base64)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def free_port(address: str = ADDRESS) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class MiniSshd:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    host_key: str  # "ssh-ed25519 AAAA..."
    client_key: Path  # an authorized private key
    address: str = ADDRESS

    @property
    def label(self) -> str:
        return f"[{self.address}]:{self.port}"

    @property
    def log(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace")

    def sessions_started(self) -> int:
        return self.log.count("Starting session:")

    @classmethod
    def start(cls, root: Path) -> MiniSshd:
        root.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        host_key = keygen(root / "host_ed25519")
        client_key = root / "client_ed25519"
        (root / "authorized_keys").write_text(keygen(client_key) + "\n")
        for _attempt in range(5):
            port = free_port()
            config = root / "sshd_config"
            config.write_text(
                f"ListenAddress {ADDRESS}:{port}\n"
                f"HostKey {root / 'host_ed25519'}\n"
                f"PidFile {root / 'sshd.pid'}\n"
                f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
                "PermitRootLogin prohibit-password\n"
                "StrictModes no\nUsePAM no\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "LogLevel VERBOSE\n"
            )
            log = (root / "sshd.log").open("wb")
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            log.close()
            server = cls(root, port, process, host_key, client_key)
            if server._wait_listening():
                return server
            server.stop()
        raise RuntimeError(f"sshd did not start: {server.log}")

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection((ADDRESS, self.port), 0.2):
                return True
            time.sleep(0.05)
        return False

    def connection_processes(self) -> list[int]:
        """The sshd processes serving connections (not the listener, not the sessions)."""
        found, todo = [], _children(self.process.pid)
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    found.append(pid)
                    todo += _children(pid)
        return found

    def stop(self) -> None:
        """Stop the listener and every session it started."""
        for pid in [self.process.pid, *self.connection_processes()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for pid in self.connection_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _children(pid: int) -> list[int]:
    """The pids of `pid`'s children (per-connection sshd processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found
