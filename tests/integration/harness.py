"""The integration-test harness: real OpenSSH servers, real git repos, stub programs.

A `TestFleet` is n simulated NixOS hosts on this machine, each one a real `sshd` (as root, on
127.0.0.(2+i) or, in single-address mode, on 127.0.0.1 with its own port) whose sessions see:

    PATH              fleet/stubs (nixos-rebuild, systemctl), then <root>/bin (a sudo shim
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
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import fleet

STUBS_DIR = Path(fleet.__file__).resolve().parent / "stubs"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SSHD = shutil.which("sshd", path=SYSTEM_PATH) or "/usr/sbin/sshd"
FLEET_COMMAND: tuple[str, ...] = (sys.executable, "-m", "fleet")
DEFAULT_UNITS: tuple[str, ...] = ("fleet.service",)

TomlValue: TypeAlias = "str | int | float | bool | Sequence[TomlValue] | Mapping[str, TomlValue]"


class HarnessError(Exception):
    """The harness could not set up or tear down the simulated fleet."""


def missing_requirements() -> list[str]:
    """What this machine lacks to run the harness (empty when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (sshd must run as root and accept root logins)")
    missing += [tool for tool in (SSHD, "ssh", "ssh-keygen", "git") if not shutil.which(tool)]
    return missing


# ---------------------------------------------------------------------------------------------
# Small helpers: commands, waiting, TOML


def _run(argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
         timeout: float = 30) -> str:  # fmt: skip
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _wait_all(procs: Iterable[tuple[subprocess.Popen[bytes], str]], timeout: float = 30) -> None:
    """Wait for processes started in parallel; raise with the first failure's stderr."""
    failures = []
    for proc, what in procs:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            failures.append(f"{what}: exit {proc.returncode}: {err.decode(errors='replace')}")
    if failures:
        raise HarnessError("; ".join(failures))


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Poll `predicate` every 20 ms until it holds; HarnessError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def git_env() -> dict[str, str]:
    """An environment for the harness's own git commands: fixed identity, no user config."""
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": "fleet test",
        "GIT_AUTHOR_EMAIL": "test@fleet.invalid",
        "GIT_COMMITTER_NAME": "fleet test",
        "GIT_COMMITTER_EMAIL": "test@fleet.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git (safe.directory=*, no signing) and return its stripped stdout."""
    argv = ["git", "-c", "safe.directory=*", "-c", "commit.gpgsign=false", *args]
    return _run(argv, cwd=cwd, env=git_env()).strip()


def _git_popen(*args: str) -> subprocess.Popen[bytes]:
    argv = ["git", "-c", "safe.directory=*", *args]
    return subprocess.Popen(argv, env=git_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: TomlValue) -> str:
    """One TOML value: strings, numbers, booleans, arrays and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def toml_table(name: str, values: Mapping[str, TomlValue | None]) -> str:
    """A `[name]` table; keys whose value is None are left out."""
    lines = [f"[{name}]"]
    lines += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Processes, found through /proc


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def is_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def pids_with_env(entries: Iterable[str]) -> list[int]:
    """Processes whose initial environment holds one of `entries` ("NAME=value")."""
    wanted = {e.encode() for e in entries}
    found = []
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if wanted.intersection(environ.split(b"\0")) and is_alive(pid):
            found.append(pid)
    return found


def _tcp_inodes(address: str, port: int, *, listening: bool) -> set[int]:
    """Inodes of the IPv4 TCP sockets bound to address:port (listening or not)."""
    (raw,) = struct.unpack("=I", socket.inet_aton(address))
    local = f"{raw:08X}:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == local and (fields[3] == "0A") == listening and fields[9] != "0":
                inodes.add(int(fields[9]))
    return inodes


def pids_with_sockets(inodes: set[int]) -> list[int]:
    """Processes holding one of the sockets `inodes`."""
    found = []
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    found.append(pid)
                    break
    return found


def signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_and_wait(pids: Iterable[int], timeout: float = 5) -> list[int]:
    """SIGCONT + SIGKILL each pid, wait until gone; return the ones still alive."""
    pids = [p for p in pids if p not in (os.getpid(), 1)]
    signal_pids(pids, signal.SIGCONT)
    signal_pids(pids, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alive


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
        _wait_all([(_keygen_popen(private), "ssh-keygen (client key)")])
        return cls(private, private.with_name(name + ".pub"))


def _keygen_popen(path: Path) -> subprocess.Popen[bytes]:
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
# The stubs' state of one host


class StubState:
    """A host's FLEET_STUB_STATE directory: what the stubs record, and the knobs they obey.

    The protocol itself is documented at the top of fleet/stubs/nixos-rebuild and
    fleet/stubs/systemctl; these methods only write and read those files.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def file(self, name: str) -> Path:
        return self.path / name

    def write(self, name: str, content: str = "") -> None:
        self.file(name).write_text(content)

    def remove(self, name: str) -> None:
        self.file(name).unlink(missing_ok=True)

    def initialize(
        self, commit: str, *, attr: str, flake: str, units: Sequence[str] = DEFAULT_UNITS
    ) -> None:
        """Generation 1 (the system the host booted), current-system and the unit list."""
        generation = self.path / "generations" / "1"
        generation.mkdir(parents=True, exist_ok=True)
        for name, value in (("commit", commit), ("attr", attr), ("flake", flake)):
            (generation / name).write_text(value + "\n")
        for link in ("profile", "current-system"):
            self.file(link).unlink(missing_ok=True)
            self.file(link).symlink_to(generation)
        self.set_units(units)

    # --- what happened

    def call_records(self) -> list[tuple[float, list[str]]]:
        """Every stub call: (timestamp, [program, *args]), in order."""
        try:
            lines = self.file("calls.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            stamp, *argv = line.split("\t")
            try:
                records.append((float(stamp), argv))
            except ValueError:
                records.append((0.0, argv))
        return records

    def calls(self, program: str | None = None) -> list[list[str]]:
        """Every stub call as [program, *args], optionally only `program`'s."""
        return [a for _, a in self.call_records() if program is None or a[:1] == [program]]

    def clear_calls(self) -> None:
        self.remove("calls.log")

    def wait_for_call(
        self, match: str | Callable[[list[str]], bool], timeout: float = 10
    ) -> list[str]:
        """The first call matching (a program name, or a predicate on the argv)."""

        def matches(argv: list[str]) -> bool:
            return argv[:1] == [match] if isinstance(match, str) else match(argv)

        found: list[list[str]] = []

        def seen() -> bool:
            found[:] = [a for a in self.calls() if matches(a)]
            return bool(found)

        wait_until(seen, timeout, f"a stub call matching {match!r} in {self.path}")
        return found[0]

    @property
    def current_system(self) -> Path:
        """Where current-system (the host's system_profile) resolves to."""
        return self.file("current-system").resolve()

    @property
    def generation(self) -> int:
        """The number of the generation current-system points to."""
        return int(self.current_system.name)

    def generations(self) -> list[int]:
        return sorted(int(p.name) for p in (self.path / "generations").iterdir())

    def commit_of(self, generation: int | None = None) -> str:
        """The commit a generation was built from (default: the current one)."""
        number = self.generation if generation is None else generation
        return (self.path / "generations" / str(number) / "commit").read_text().strip()

    # --- nixos-rebuild knobs

    @staticmethod
    def _failure(output: str, code: int, default_code: int) -> str:
        head = f"{code}\n" if code != default_code else ""
        return head + (output if not output or output.endswith("\n") else output + "\n")

    def fail_switch(self, output: str = "", code: int = 1, *, once: bool = False) -> None:
        """Make the next builds fail before activation (printing `output`, exiting `code`)."""
        self.write("fail-switch-once" if once else "fail-switch", self._failure(output, code, 1))

    def fail_activation(self, output: str = "", code: int = 4) -> None:
        self.write("fail-activation", self._failure(output, code, 4))

    def fail_rollback(self, output: str = "", code: int = 1) -> None:
        self.write("fail-rollback", self._failure(output, code, 1))

    def set_switch_delay(self, seconds: float | None) -> None:
        self._set_number("switch-delay", seconds)

    def set_activation_delay(self, seconds: float | None) -> None:
        self._set_number("activation-delay", seconds)

    def set_system_running_delay(self, seconds: float | None) -> None:
        self._set_number("system-running-delay", seconds)

    def _set_number(self, name: str, seconds: float | None) -> None:
        if seconds is None:
            self.remove(name)
        else:
            self.write(name, f"{seconds:g}\n")

    def block_switch(self) -> None:
        """Make builds block before activation until `release_switch`."""
        fifo = self.file("switch-fifo")
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)

    def wait_switch_blocked(self, timeout: float = 10) -> int:
        """Wait until a build blocks on the FIFO; return the stub's pid."""
        blocked = self.file("switch-blocked")
        wait_until(lambda: blocked.is_file() and blocked.read_text().strip().isdigit(),
                   timeout, f"a blocked switch in {self.path}")  # fmt: skip
        return int(blocked.read_text())

    def release_switch(self, timeout: float = 10, *, keep: bool = False) -> None:
        """Let the blocked build go on (waits for it to block); remove the FIFO unless `keep`."""
        fifo = self.file("switch-fifo")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as error:
                if error.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise HarnessError(f"no switch is waiting on {fifo}") from error
                time.sleep(0.02)
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)
        if not keep:
            fifo.unlink(missing_ok=True)

    def spawn_grandchild(self, enabled: bool = True) -> None:
        """Make builds start a `sleep 1000` grandchild and hang waiting for it."""
        if enabled:
            self.write("spawn-grandchild")
        else:
            self.remove("spawn-grandchild")

    def _pid(self, name: str) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.file(name).read_text())
        return None

    def grandchild_pid(self) -> int | None:
        return self._pid("grandchild.pid")

    def rebuild_pid(self) -> int | None:
        """The pid of the latest nixos-rebuild call."""
        return self._pid("nixos-rebuild.pid")

    # --- systemctl knobs

    def _set_lines(self, name: str, lines: Iterable[str]) -> None:
        self.write(name, "".join(f"{line}\n" for line in lines))

    def set_units(self, units: Iterable[str]) -> None:
        self._set_lines("units", units)

    def fail_restart(self, units: Iterable[str]) -> None:
        self._set_lines("fail-restart", units)

    def set_inactive(self, units: Iterable[str]) -> None:
        self._set_lines("inactive", units)

    def set_degraded(self, failed_units: Iterable[str] | None = ()) -> None:
        """Degrade the system (listing `failed_units`), or make it healthy with None."""
        if failed_units is None:
            self.remove("degraded")
        else:
            self._set_lines("degraded", failed_units)

    def set_system_state(self, state: str | None) -> None:
        if state is None:
            self.remove("system-state")
        else:
            self.write("system-state", state + "\n")


# ---------------------------------------------------------------------------------------------
# One host: a real sshd


SUDO_SHIM = """\
#!/bin/sh
# sudo -- the fleet test harness's stand-in: it records the call in calls.log, drops sudo's own
# options and runs the command with the environment kept (the real sudo would reset PATH and
# FLEET_STUB_STATE, and every test host is root anyway).
tab=$(printf '\\t')
line=$(date +%s.%N 2>/dev/null)
case $line in *N | '') line=$(date +%s) ;; esac
line=$line${tab}sudo
for a in "$@"; do line="$line$tab$a"; done
[ -n "${FLEET_STUB_STATE:-}" ] && printf '%s\\n' "$line" >> "$FLEET_STUB_STATE/calls.log"
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; break ;;
    -u | -g | -C | -D | -p | -r | -t | -U | -T) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec "$@"
"""


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
        return _keygen_popen(self.host_key)

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
        _wait_all([(_keygen_popen(self.host_key), f"ssh-keygen for {self.name}")])
        self.restart(timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # --- sessions and other processes

    def session_pids(self) -> list[int]:
        """The sshd processes serving this host's connections (not the listener)."""
        inodes = _tcp_inodes(self.address, self.port, listening=False)
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
        others = _tcp_inodes(self.address, self.port, listening=True)
        holders = pids_with_sockets(others) if others else []  # a listener we lost track of
        return sorted({*listener, *holders, *self.session_pids(), *self.stub_pids()})


# ---------------------------------------------------------------------------------------------
# The fleet


def host_configuration(name: str, *, broken: bool = False) -> str:
    """A host's configuration.nix; the stub fails to evaluate it when `broken`."""
    guard = "assert false; # BROKEN (fleet test harness)\n" if broken else ""
    return (
        f"# {name}: configuration of a simulated host (nixos-rebuild is a stub)\n"
        f"{{ ... }}:\n{guard}{{\n  networking.hostName = {json.dumps(name)};\n}}\n"
    )


FLAKE_NIX = """\
{
  description = "fleet integration tests: a placeholder, never evaluated (nixos-rebuild is a stub)";
  outputs = { self }: { };
}
"""


class TestFleet:
    """n simulated hosts, their upstream repo, and the files fleet needs to reach them."""

    __test__ = False  # not a pytest test class

    def __init__(self, root: Path, hosts: Sequence[SshdHost], client_key: ClientKey) -> None:
        self.root = root
        self.hosts: dict[str, SshdHost] = {h.name: h for h in hosts}
        self.client_key = client_key
        self.upstream = root / "upstream.git"
        self.work = root / "work"
        self.controller_repo = root / "controller"
        self.known_hosts = root / "known_hosts"
        self.config = root / "fleet.toml"
        self.state_dir = root / "state"
        self.cli_home = root / "cli-home"
        self._cli: list[subprocess.Popen[str]] = []

    def __enter__(self) -> TestFleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> SshdHost:
        return self.hosts[name]

    @property
    def names(self) -> list[str]:
        return list(self.hosts)

    def calls(self, name: str, program: str | None = None) -> list[list[str]]:
        """The stub calls made on host `name`, each as [program, *args]."""
        return self.hosts[name].stub.calls(program)

    # --- git

    def head_of(self, name: str) -> str:
        return git("rev-parse", "HEAD", cwd=self.hosts[name].repo)

    def upstream_head(self, branch: str = "main") -> str:
        return git("rev-parse", f"refs/heads/{branch}", cwd=self.upstream)

    def _commit(self, files: Mapping[str, str | None], message: str, *, mode: int = 0o644) -> str:
        """Commit `files` (path -> content, None deletes) on upstream's main in the scratch
        clone; return the commit (not pushed)."""
        git("fetch", "-q", "origin", "main", cwd=self.work)
        git("reset", "-q", "--hard", "FETCH_HEAD", cwd=self.work)
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                git("rm", "-q", "--", rel, cwd=self.work)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(mode)
            git("add", "--", rel, cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push_change(self, files: Mapping[str, str | None], message: str = "change") -> str:
        """Commit `files` on top of upstream's main and push; return the new commit."""
        commit = self._commit(files, message)
        git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=self.work)
        return commit

    def push_pr(self, pr: int, files: Mapping[str, str | None], message: str = "pr") -> str:
        """Push a commit on top of main to refs/pull/<pr>/head (main does not move)."""
        commit = self._commit(files, message)
        git("push", "-q", "origin", f"HEAD:refs/pull/{pr}/head", cwd=self.work)
        return commit

    def break_host(self, name: str) -> str:
        """Push a configuration.nix for `name` that fails to evaluate (contains BROKEN)."""
        path = f"hosts/{name}/configuration.nix"
        return self.push_change({path: host_configuration(name, broken=True)}, f"break {name}")

    def fix_host(self, name: str) -> str:
        path = f"hosts/{name}/configuration.nix"
        return self.push_change({path: host_configuration(name)}, f"fix {name}")

    def make_dirty(self, name: str) -> None:
        """Edit a tracked file in the host's checkout without committing it."""
        path = self.hosts[name].repo / "hosts" / name / "configuration.nix"
        with path.open("a") as config:
            config.write("# an uncommitted local edit\n")

    def add_host_test(
        self, name: str, script_name: str, content: str, *, push: bool = True
    ) -> str | None:
        """An executable test in hosts/<name>/tests/: pushed upstream (arriving with the
        next pull; returns the commit) or, with push=False, written into the host's checkout
        (untracked, so the checkout stays clean)."""
        rel = f"hosts/{name}/tests/{script_name}"
        if push:
            commit = self._commit({rel: content}, f"test {script_name} for {name}", mode=0o755)
            git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=self.work)
            return commit
        path = self.hosts[name].repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o755)
        return None

    def pull(self, name: str) -> str:
        """Bring the host's checkout to upstream's main directly (not through fleet)."""
        repo = self.hosts[name].repo
        git("fetch", "-q", "origin", "main", cwd=repo)
        git("merge", "-q", "--ff-only", "FETCH_HEAD", cwd=repo)
        return self.head_of(name)

    # --- files for fleet

    def write_known_hosts(
        self, path: Path | None = None, *, empty: bool = False, hosts: Iterable[str] | None = None
    ) -> Path:
        """A known_hosts file with the host keys of `hosts` (default all), or an empty one."""
        path = path or self.known_hosts
        names = [] if empty else list(self.hosts if hosts is None else hosts)
        path.write_text("".join(self.hosts[n].host_key_line() + "\n" for n in names))
        return path

    def host_table(self, name: str) -> dict[str, TomlValue | None]:
        host = self.hosts[name]
        return {
            "address": host.address,
            "port": host.port,
            "repo": str(host.repo),
            "system_profile": str(host.system_profile),
            "run_dir": str(host.run_dir),
            "detach": "setsid",
        }

    def write_config(
        self,
        path: Path | None = None,
        *,
        ssh: Mapping[str, TomlValue | None] | None = None,
        defaults: Mapping[str, TomlValue | None] | None = None,
        controller: Mapping[str, TomlValue | None] | None = None,
        hosts: Mapping[str, Mapping[str, TomlValue | None]] | None = None,
        host_names: Iterable[str] | None = None,
        extra: str = "",
    ) -> Path:
        """Write a fleet.toml for this fleet (default: <root>/fleet.toml) and return its path.

        Each mapping is merged over the generated table (a None value removes a key); `hosts`
        may name hosts that are not in the fleet (e.g. an unreachable address); `host_names`
        limits which of the fleet's hosts are written; `extra` is raw TOML appended (ops,
        pipelines, ...).
        """
        tables: dict[str, dict[str, TomlValue | None]] = {
            "ssh": {
                "identity_file": str(self.client_key.private),
                "known_hosts": [str(self.known_hosts)],
                "host_key_policy": "strict",
                "connect_timeout": 5,
                **(ssh or {}),
            },
            "defaults": {"user": "root", "branch": "main", **(defaults or {})},
            "controller": {"repo": str(self.controller_repo), **(controller or {})},
        }
        out = [toml_table(name, values) for name, values in tables.items()]
        overrides = dict(hosts or {})
        for name in self.hosts if host_names is None else host_names:
            values = {**self.host_table(name), **overrides.pop(name, {})}
            out.append(toml_table(f"hosts.{_toml_key(name)}", values))
        out += [toml_table(f"hosts.{_toml_key(n)}", v) for n, v in overrides.items()]
        if extra:
            out.append(extra if extra.endswith("\n") else extra + "\n")
        path = path or self.config
        path.write_text("\n".join(out))
        return path

    # --- talking to hosts and running fleet

    def ssh_argv(self, name: str, *, known_hosts: Path | None = None) -> list[str]:
        """The system ssh client's argv to reach `name` as root (add the remote command)."""
        host = self.hosts[name]
        return [
            "ssh", "-F", os.devnull, "-i", str(self.client_key.private),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5",
            "-o", "LogLevel=ERROR", "-p", str(host.port), f"root@{host.address}",
        ]  # fmt: skip

    def ssh(
        self, name: str, command: str, *, check: bool = False, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` (a shell string) on host `name` with the system ssh client."""
        proc = subprocess.run(
            [*self.ssh_argv(name), "--", command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise HarnessError(f"ssh {name} {command!r}: exit {proc.returncode}: {proc.stderr}")
        return proc

    def cli_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """fleet's environment: FLEET_STATE_DIR in the fleet, HOME isolated (no ~/.ssh)."""
        self.cli_home.mkdir(exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        return {
            **base,
            "HOME": str(self.cli_home),
            "FLEET_STATE_DIR": str(self.state_dir),
            "NO_COLOR": "1",
            "TERM": "dumb",
            "COLUMNS": "200",
            **(env or {}),
        }

    def cli_argv(self, args: Sequence[str], config: Path | None = None) -> list[str]:
        return [*FLEET_COMMAND, "--config", str(config or self.config), *args]

    def run_cli(
        self,
        args: Sequence[str],
        *,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run `fleet --config <config> ARGS...` to completion (output as text)."""
        return subprocess.run(
            self.cli_argv(args, config), env=self.cli_env(env), input=input,
            capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root,
        )  # fmt: skip

    def spawn_cli(
        self,
        args: Sequence[str],
        *,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """Start fleet in the background (stdout/stderr piped); `close()` kills it if left."""
        proc = subprocess.Popen(
            self.cli_argv(args, config), env=self.cli_env(env), cwd=self.root, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._cli.append(proc)
        return proc

    # --- teardown

    def leftover_processes(self) -> dict[str, list[int]]:
        """Live processes of each host (empty lists after `close()`)."""
        return {name: host.processes() for name, host in self.hosts.items()}

    def close(self) -> None:
        """Kill every process of the fleet; HarnessError if one survives."""
        for proc in self._cli:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        self._cli.clear()
        for host in self.hosts.values():
            host.kill()
        pids = {p for host in self.hosts.values() for p in host.processes()}
        alive = kill_and_wait(pids)
        if alive:
            raise HarnessError(f"processes survived the fleet's teardown: {alive}")


def _clone_popen(upstream: Path, target: Path) -> tuple[subprocess.Popen[bytes], str]:
    return _git_popen("clone", "-q", str(upstream), str(target)), f"git clone {target}"


def _init_upstream(root: Path, names: Sequence[str]) -> str:
    """upstream.git with the initial tree on main, and the scratch clone; return the commit."""
    upstream, work = root / "upstream.git", root / "work"
    git("init", "-q", "--bare", "-b", "main", str(upstream))
    git("init", "-q", "-b", "main", str(work))
    git("remote", "add", "origin", str(upstream), cwd=work)
    (work / "flake.nix").write_text(FLAKE_NIX)
    for name in names:
        config = work / "hosts" / name / "configuration.nix"
        config.parent.mkdir(parents=True)
        config.write_text(host_configuration(name))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "initial configuration", cwd=work)
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def _wait_ready_or_move(host: SshdHost, timeout: float, attempts: int = 3) -> None:
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


def start_fleet(
    root: Path,
    n: int = 3,
    *,
    client_key: ClientKey | None = None,
    names: Sequence[str] | None = None,
    single_address: bool | None = None,
    empty_known_hosts: bool = False,
    units: Sequence[str] = DEFAULT_UNITS,
    timeout: float = 10,
) -> TestFleet:
    """Start n hosts in parallel and write known_hosts and fleet.toml; see the module doc.

    Host i listens on 127.0.0.(2+i) (127.0.1.x from the 251st on); `names` (default host1,
    host2, ...) overrides `n`. `single_address` puts every host on 127.0.0.1 (distinct ports),
    for systems where only that loopback address exists; by default it is used off Linux.
    """
    names = list(names or [f"host{i + 1}" for i in range(n)])
    if single_address is None:
        single_address = not sys.platform.startswith("linux")
    root.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    key_procs = []
    if client_key is None:
        client_key = ClientKey(root / "client" / "id_ed25519", root / "client" / "id_ed25519.pub")
        client_key.private.parent.mkdir(exist_ok=True)
        key_procs.append((_keygen_popen(client_key.private), "ssh-keygen (client key)"))
    shim_dir = root / "bin"
    shim_dir.mkdir(exist_ok=True)
    (shim_dir / "sudo").write_text(SUDO_SHIM)
    (shim_dir / "sudo").chmod(0o755)
    path = f"{STUBS_DIR}:{shim_dir}:{SYSTEM_PATH}"
    openssh = openssh_version()
    hosts: list[SshdHost] = []
    for i, name in enumerate(names):
        address = "127.0.0.1" if single_address else f"127.0.{i // 250}.{2 + i % 250}"
        port = free_port(address)
        while any((h.address, h.port) == (address, port) for h in hosts):
            port = free_port(address)
        host = SshdHost(
            name, address=address, port=port, root=root / "hosts" / name,
            authorized_keys=root / "authorized_keys", path=path, openssh=openssh,
        )  # fmt: skip
        key_procs.append((host.prepare(), f"ssh-keygen for {name}"))
        hosts.append(host)
    result = TestFleet(root, hosts, client_key)
    try:
        commit = _init_upstream(root, names)
        clones = [_clone_popen(result.upstream, h.repo) for h in hosts]
        clones.append(_clone_popen(result.upstream, result.controller_repo))
        _wait_all(key_procs)
        (root / "authorized_keys").write_text(client_key.public.read_text())
        for host in hosts:
            host.launch()
        _wait_all(clones)
        for host in hosts:
            flake = f"{host.repo}#{host.name}"
            host.stub.initialize(commit, attr=host.name, flake=flake, units=units)
        for host in hosts:
            _wait_ready_or_move(host, timeout)
        result.write_known_hosts(empty=empty_known_hosts)
        result.write_config()
    except BaseException:
        result.close()
        raise
    return result


class FleetFactory:
    """Creates fleets under one directory (the test's tmp_path) and closes them all."""

    def __init__(self, base: Path, client_key: ClientKey) -> None:
        self.base = base
        self.client_key = client_key
        self.fleets: list[TestFleet] = []

    def __call__(
        self,
        n: int = 3,
        *,
        names: Sequence[str] | None = None,
        single_address: bool | None = None,
        empty_known_hosts: bool = False,
        units: Sequence[str] = DEFAULT_UNITS,
    ) -> TestFleet:
        root = self.base if not self.fleets else self.base / f"fleet{len(self.fleets) + 1}"
        result = start_fleet(
            root, n, client_key=self.client_key, names=names, single_address=single_address,
            empty_known_hosts=empty_known_hosts, units=units,
        )  # fmt: skip
        self.fleets.append(result)
        return result

    def close(self) -> None:
        errors = []
        for test_fleet in self.fleets:
            try:
                test_fleet.close()
            except HarnessError as error:
                errors.append(str(error))
        self.fleets.clear()
        if errors:
            raise HarnessError("; ".join(errors))
