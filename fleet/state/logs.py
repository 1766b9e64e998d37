"""The ops' output, byte for byte as the host sent it, one file per op:

    logs/<run_id>/<host>/<op>.log          a host op's output
    logs/<run_id>/controller/<op>.log      a controller op's output

An op's log is open while the op runs and flushed on every write, so that readers in other
processes (the dashboard, `fleet logs -f`) see the output as it comes; output is never held in
memory. Each op's path is checked and built once, each directory made once, and the logs this
process wrote are remembered, so that recording an op's result (several times in a run) costs
no file system call.
"""

from __future__ import annotations

import io
import os
from contextlib import suppress
from pathlib import Path

from fleet.errors import StateError
from fleet.models import CONTROLLER, OpResult, OpStatus, is_valid_name
from fleet.state.database import os_problem

LogKey = tuple[str, str | None, str]  # (run_id, host, op); host None for a controller op


class OpLogs:
    """The log files under `<state_dir>/logs`, and the ones open for writing."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._state_dir_str = str(state_dir)
        self.dir = state_dir / "logs"
        self._open: dict[LogKey, io.BufferedWriter] = {}
        self._paths: dict[LogKey, Path] = {}  # checked and built
        self._dirs: set[Path] = set()  # made by this process
        self._written: set[LogKey] = set()  # logs this process created or appended to

    def path(self, run_id: str, host: str | None, op: str) -> Path:
        """Where an op's output is kept; `host` None (or "") for a controller op."""
        for kind, name in (("run id", run_id), ("host", host or CONTROLLER), ("op", op)):
            if not is_valid_name(name):
                raise StateError(f"invalid {kind} {name!r}: not a log name")
        return self.dir / run_id / (host or CONTROLLER) / f"{op}.log"

    def _run_path(self, run_id: str, host: str | None, op: str) -> Path:
        """`path`, remembered for a run this process records (forgotten with `forget_run`;
        readers of other runs' logs use `path`, so that nothing piles up)."""
        key = (run_id, host or None, op)
        known = self._paths.get(key)
        if known is None:
            known = self._paths[key] = self.path(run_id, host, op)
        return known

    def read(self, run_id: str, host: str | None, op: str, last: int | None) -> bytes | None:
        """An op's output (only its `last` bytes if given); None when it has no log file."""
        path = self.path(run_id, host, op)
        try:
            with path.open("rb") as log:
                if last is not None:
                    log.seek(max(0, log.seek(0, os.SEEK_END) - max(last, 0)))
                return log.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from exc

    def ref(self, run_id: str, host: str | None, result: OpResult) -> str | None:
        """The absolute log path to record: the result's (relative to the state directory), or
        the store's own log when the op wrote one."""
        if result.log:  # (an absolute `log` stays as it is)
            return os.path.join(self._state_dir_str, result.log)
        if (run_id, host or None, result.op) in self._written:
            return str(self._run_path(run_id, host, result.op))
        if result.status is OpStatus.PENDING:  # not begun, and nothing noted: no output yet
            return None
        path = self.path(run_id, host, result.op)
        return str(path) if path.exists() else None

    def open(self, key: LogKey) -> None:
        if key in self._open:  # a retry: its attempts share one log
            return
        path = self._run_path(*key)
        try:
            self._open[key] = self._open_file(path)
        except OSError as exc:
            raise StateError(os_problem(self.state_dir, exc, path)) from exc
        self._written.add((key[0], key[1] or None, key[2]))

    def _open_file(self, path: Path) -> io.BufferedWriter:
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        try:
            return path.open("ab")
        except FileNotFoundError:  # its directory was removed meanwhile: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("ab")

    def append(self, run_id: str, host: str | None, op: str, data: bytes) -> None:
        key = (run_id, host, op)
        log = self._open.get(key)
        try:
            if log is not None:
                log.write(data)
                log.flush()  # readers in other processes (dashboard, `fleet logs -f`) see it now
                return
            path = self._run_path(*key)  # a note before the op started or after it finished
            with self._open_file(path) as once:
                once.write(data)
        except OSError as exc:
            raise StateError(os_problem(self.state_dir, exc, self.path(*key))) from exc
        self._written.add((run_id, host or None, op))

    def close(self, key: LogKey) -> None:
        log = self._open.pop(key, None)
        if log is None:
            return
        try:
            log.close()
        except OSError as exc:
            raise StateError(os_problem(self.state_dir, exc, self.path(*key))) from exc

    def close_host(self, run_id: str, host: str) -> None:
        """Close the logs of `host`'s ops in `run_id`."""
        for key in [k for k in self._open if k[0] == run_id and k[1] == host]:
            self.close(key)

    def close_run(self, run_id: str) -> None:
        """Close the logs of every op of `run_id`."""
        for key in [k for k in self._open if k[0] == run_id]:
            self.close(key)

    def abandon_run(self, run_id: str) -> None:
        """Close the logs of every op of `run_id`, ignoring errors: its run stopped on one."""
        self._abandon([k for k in self._open if k[0] == run_id])
        self.forget_run(run_id)

    def forget_run(self, run_id: str) -> None:
        """Drop what is remembered of `run_id`'s logs (its run is recorded as ended), so that
        a long-lived process (the dashboard) does not keep every run's paths."""
        for key in [k for k in self._paths if k[0] == run_id]:
            del self._paths[key]
        self._written = {k for k in self._written if k[0] != run_id}
        self._dirs = {d for d in self._dirs if d.parent.name != run_id}

    def close_all(self) -> None:
        """Close every open log, ignoring errors (a log that cannot be flushed already raised
        StateError on its write)."""
        self._abandon(list(self._open))

    def _abandon(self, keys: list[LogKey]) -> None:
        for key in keys:
            with suppress(OSError):  # the file is closed all the same
                self._open.pop(key).close()
