"""The stream the views of a run write to: it never blocks the event loop and never raises.

A view that cannot write must stop the view, never the run: a reader that went away
(`fleet do-all | head -1`), a closed descriptor (`>&-`, `2>&-`), a full device (`> /dev/full`)
make the `ViewSink` dead, and later writes are dropped silently. A reader that is slow (a
`less` not scrolled, Ctrl-S) costs lines, not time: the descriptor is put in non-blocking mode
for the run, what the reader has not taken yet is kept up to `limit` bytes and written as soon
as the descriptor is writable, and what does not fit is dropped and counted (`dropped`, told
once at the end by `note`). `close()` gives the descriptor its blocking mode back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TextIO

__all__ = ["ViewSink", "quiet_if_broken"]

DEFAULT_LIMIT = 1 << 20  # bytes kept for a slow reader before lines are dropped


class ViewSink:
    """A write-only text stream over `stream`'s descriptor (`None`: a closed stream)."""

    def __init__(self, stream: TextIO | None, *, limit: int = DEFAULT_LIMIT) -> None:
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        self.dropped = 0
        self._limit = limit
        self._pending = bytearray()
        self._fd: int | None = None
        self._blocking = True
        self._tty = False
        self._watching: asyncio.AbstractEventLoop | None = None
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
            fd = stream.fileno()
            self._blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
            self._tty = os.isatty(fd)
            self._fd = fd

    @property
    def dead(self) -> bool:
        return self._fd is None

    def isatty(self) -> bool:
        return self._tty

    def write(self, text: str) -> int:
        if self._fd is None:
            return len(text)
        data = text.encode(self.encoding, errors="replace")
        if len(self._pending) + len(data) > self._limit:
            self.dropped += max(1, data.count(b"\n"))
            return len(text)
        self._pending += data
        self._drain()
        return len(text)

    def flush(self) -> None:
        """Nothing to do: what can be written is written by `write` or when writable."""

    def _drain(self) -> None:
        fd = self._fd
        while fd is not None and self._pending:
            try:
                written = os.write(fd, self._pending)
            except BlockingIOError:
                self._watch(fd)
                return
            except InterruptedError:
                continue
            except OSError:  # EPIPE, EBADF, ENOSPC, EIO...: the view stops, the run goes on
                self._give_up()
                return
            del self._pending[:written]
        self._unwatch()

    def _watch(self, fd: int) -> None:
        if self._watching is not None:
            return
        try:
            loop = asyncio.get_running_loop()
            loop.add_writer(fd, self._drain)
        except (RuntimeError, OSError, ValueError):
            return  # no loop (or a descriptor it cannot watch): the next write tries again
        self._watching = loop

    def _unwatch(self) -> None:
        if self._watching is not None and self._fd is not None:
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                self._watching.remove_writer(self._fd)
        self._watching = None

    def _give_up(self) -> None:
        self._unwatch()
        fd, self._fd = self._fd, None
        self._pending.clear()
        if fd is not None:
            quiet_if_broken(fd)

    def close(self) -> None:
        """Stop watching the descriptor and give it its blocking mode back; what the reader
        has not taken yet is written (blocking: the run is over) unless the stream is dead."""
        self._unwatch()
        fd = self._fd
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.set_blocking(fd, self._blocking)
        try:
            while self._pending:
                del self._pending[: os.write(fd, self._pending)]
        except OSError:
            self._give_up()

    def note(self) -> str | None:
        """One line for the end of the run when lines were dropped for a slow reader."""
        if not self.dropped:
            return None
        return (
            f"fleet: note: {self.dropped} line(s) of progress were not shown: the reader was "
            "too slow (the logs are complete: `fleet logs`)"
        )


def quiet_if_broken(fd: int) -> None:
    """Point `fd` at /dev/null so that later writes (and Python's flush at exit) of a broken
    stream go nowhere instead of raising."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
