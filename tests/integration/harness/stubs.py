"""The stub programs' side of a host: `StubState` (the stubs' state directory) and the sudo shim.

Every host's PATH starts with fleet/demo/stubs (nixos-rebuild, systemctl), then a directory holding
`SUDO_SHIM` as `sudo`; all of them record their calls in the host's FLEET_STUB_STATE/calls.log.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import fleet
from tests.integration.harness.processes import HarnessError, wait_until

STUBS_DIR = Path(fleet.__file__).resolve().parent / "demo" / "stubs"
DEFAULT_UNITS: tuple[str, ...] = ("fleet.service",)


class StubState:
    """A host's FLEET_STUB_STATE directory: what the stubs record, and the knobs they obey.

    The protocol itself is documented at the top of fleet/demo/stubs/nixos-rebuild and
    fleet/demo/stubs/systemctl; these methods only write and read those files.
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
