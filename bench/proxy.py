"""A delay proxy: every host behind a loopback listener that adds a round-trip time, and counts.

    python bench/proxy.py SPEC.json        (SPEC: {"hosts": [{"name", "address", "port"}, ...]})

This kernel has no netem, so the benchmark puts the round-trip time in itself: one listener
per host (on the host's own loopback address, a port of its own) forwards to the host's sshd,
both directions, bytes in order, each chunk held for a fixed one-way delay (half the RTT) from
the moment it was read. A TCP connection's own handshake is paid too: the proxy connects to the
host 1.5 RTT after it accepted (SYN, SYN-ACK, ACK), and forwards nothing either way before
that, so a client's first byte reaches the host, and the host's first byte the client, when
they would over a link of that RTT.

**Round trips** are counted per host, by what the proxy sees of each connection: a *turn* is
a burst of bytes from the client followed by a burst from the host (counted when the first
host byte after client bytes is read). A client that waits for the host's answer before it
speaks again costs one turn per exchange, which is what a round-trip time is paid for;
bytes one side sends without waiting (pipelined) merge into its burst and cost nothing. The
host's greeting counts as the first turn (the client's greeting precedes it). Each connection
adds one more for its TCP handshake, which the proxy emulates but cannot see:

    round trips of a host = its connections (TCP) + its turns

The count is exact for a strict request-response exchange and can over-count when both sides
talk at once (a window adjust from the client while the host streams output), which is why a
burst is a burst: the count of such interleavings at RTT 0 and at 80 ms shows how much.

On stdin, one command a line; each answers one JSON line on stdout:

    rtt MS     set the round-trip time for connections from now on    {"rtt_ms": MS}
    reset      zero the counters                                       {"reset": true}
    counts     the counters, by host name                              {"NAME": {...}, ...}
    log        each connection's turns (client and host bytes each)    {"NAME": [[[c, s], ...]]}

The first line printed lists the listeners: {"NAME": ["ADDRESS", PORT], ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

CHUNK = 65536


class Direction(Enum):
    TO_HOST = "client->host"
    TO_CLIENT = "host->client"


@dataclass
class Counts:
    """One host's counters since the last reset."""

    connections: int = 0
    turns: int = 0
    bytes_to_host: int = 0
    bytes_to_client: int = 0

    @property
    def round_trips(self) -> int:
        return self.connections + self.turns


@dataclass
class Conversation:
    """What one connection has said so far: the direction last seen and each turn's bytes."""

    counts: Counts
    last: Direction | None = None
    turns: list[list[int]] = field(default_factory=list)  # [client bytes, host bytes] per turn
    _client_bytes: int = 0

    def heard(self, direction: Direction, size: int) -> None:
        if direction is Direction.TO_HOST:
            self.counts.bytes_to_host += size
            if self.last is not Direction.TO_HOST:
                self._client_bytes = 0
            self._client_bytes += size
        else:
            self.counts.bytes_to_client += size
            if self.last is Direction.TO_HOST:
                self.counts.turns += 1
                self.turns.append([self._client_bytes, 0])
            if self.turns:
                self.turns[-1][1] += size
        self.last = direction


class DelayProxy:
    """Listeners for the hosts (name -> (address, port) of the real server), one event loop."""

    def __init__(self, upstreams: Mapping[str, tuple[str, int]], rtt: float = 0.0) -> None:
        self.upstreams = dict(upstreams)
        self.rtt = rtt  # seconds, for connections accepted from now on
        self.counts: dict[str, Counts] = {name: Counts() for name in upstreams}
        self.conversations: dict[str, list[Conversation]] = {name: [] for name in upstreams}
        self.listeners: dict[str, tuple[str, int]] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, listen: Mapping[str, str] | None = None) -> dict[str, tuple[str, int]]:
        """Listen for every host (on `listen[name]`, default the host's own address, port 0)."""
        for name, (address, _port) in self.upstreams.items():
            host = (listen or {}).get(name, address)
            server = await asyncio.start_server(functools.partial(self._relay, name), host, 0)
            self._servers.append(server)
            sockname = server.sockets[0].getsockname()
            self.listeners[name] = (sockname[0], sockname[1])
        return dict(self.listeners)

    def reset(self) -> None:
        self.counts = {name: Counts() for name in self.upstreams}
        self.conversations = {name: [] for name in self.upstreams}

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def _relay(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One client connection: wait out the TCP handshake, connect, pump both ways."""
        this = asyncio.current_task()
        assert this is not None
        self._tasks.add(this)
        this.add_done_callback(self._tasks.discard)
        rtt = self.rtt
        talk = Conversation(self.counts[name])
        talk.counts.connections += 1
        self.conversations[name].append(talk)
        to_host: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        to_client: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        tasks = [asyncio.create_task(_read(reader, to_host, rtt / 2, talk, Direction.TO_HOST))]
        upstream: asyncio.StreamWriter | None = None
        try:
            await asyncio.sleep(1.5 * rtt)  # SYN, SYN-ACK, ACK: the host accepts 1.5 RTT on
            up_reader, upstream = await asyncio.open_connection(*self.upstreams[name])
            tasks.append(
                asyncio.create_task(_read(up_reader, to_client, rtt / 2, talk, Direction.TO_CLIENT))
            )
            writers = [
                asyncio.create_task(_write(to_host, upstream)),
                asyncio.create_task(_write(to_client, writer)),
            ]
            tasks += writers
            await asyncio.gather(*writers)
        except (OSError, asyncio.CancelledError):  # a closed proxy: no traceback for it
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()


async def _read(
    reader: asyncio.StreamReader,
    queue: asyncio.Queue[tuple[float, bytes]],
    delay: float,
    talk: Conversation,
    direction: Direction,
) -> None:
    """Read chunks, note them, queue each with the time it may be delivered (b"" is EOF)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = await reader.read(CHUNK)
        except OSError:
            data = b""
        if data:
            talk.heard(direction, len(data))
        queue.put_nowait((loop.time() + delay, data))
        if not data:
            return


async def _write(queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
    """Deliver the queued chunks in order, each at its time; pass EOF on as a half close."""
    loop = asyncio.get_running_loop()
    while True:
        due, data = await queue.get()
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if not data:
            if writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()
            return
        writer.write(data)
        await writer.drain()


# ---------------------------------------------------------------------------------------------
# The process: bench/proxy.py SPEC.json, driven over stdin (see the module docstring)


def answer(proxy: DelayProxy, line: str) -> dict[str, Any]:
    """The answer to one command line."""
    word, _, arg = line.strip().partition(" ")
    match word:
        case "rtt":
            proxy.rtt = float(arg) / 1000
            return {"rtt_ms": float(arg)}
        case "reset":
            proxy.reset()
            return {"reset": True}
        case "counts":
            return {name: asdict(c) for name, c in proxy.counts.items()}
        case "log":
            return {name: [t.turns for t in talks] for name, talks in proxy.conversations.items()}
        case _:
            return {"error": f"unknown command {line.strip()!r} (rtt MS, reset, counts, log)"}


async def serve(spec: Path) -> None:
    hosts = json.loads(spec.read_text())["hosts"]  # noqa: ASYNC240 (before anything runs)
    proxy = DelayProxy({h["name"]: (h["address"], h["port"]) for h in hosts})
    listeners = await proxy.start()
    print(json.dumps(listeners), flush=True)
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            print(json.dumps(answer(proxy, line)), flush=True)
    finally:
        await proxy.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: bench/proxy.py SPEC.json", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
