"""bench/proxy.py: the delay is applied both ways, bytes keep their order, round trips count.

No speed is asserted: the delays are lower bounds (a held chunk is never early), and the
counts are logic (a client that waits for each answer costs one turn per answer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from bench.proxy import Conversation, Counts, DelayProxy, Direction, answer

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hello\n")  # speaks first, as an sshd does
    await writer.drain()
    await _echo(reader, writer)


@asynccontextmanager
async def proxied(handler: Handler, rtt: float) -> AsyncIterator[tuple[DelayProxy, int]]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    proxy = DelayProxy({"h": ("127.0.0.1", server.sockets[0].getsockname()[1])}, rtt=rtt)
    listeners = await proxy.start()
    try:
        yield proxy, listeners["h"][1]
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


async def _settle(proxy: DelayProxy, host: str, connections: int) -> None:
    """Wait until the proxy has seen `connections` connections of `host` end."""
    for _ in range(500):
        if proxy.counts[host].connections >= connections and not proxy._tasks:
            return
        await asyncio.sleep(0.01)


def test_each_answer_arrives_a_round_trip_after_its_question_and_the_first_after_two() -> None:
    rtt = 0.1

    async def main() -> list[float]:
        async with proxied(_echo, rtt) as (_proxy, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            times = []
            for k in range(3):
                sent = time.monotonic()
                writer.write(b"ping %d\n" % k)
                assert await reader.readline() == b"ping %d\n" % k
                times.append(time.monotonic() - sent)
            writer.close()
            await writer.wait_closed()
            return times

    times = asyncio.run(main())
    # the first exchange also pays the TCP handshake the proxy emulates: 2 RTT in all
    assert times[0] >= 2 * rtt * 0.95, times
    assert all(t >= rtt * 0.95 for t in times[1:]), times
    assert all(t < 30 for t in times), times  # generous: only that it ends


def test_bytes_arrive_in_order_both_ways_and_an_end_of_file_passes_on() -> None:
    chunks = [b"%05d," % k for k in range(300)]

    async def main() -> bytes:
        async with proxied(_echo, 0.02) as (proxy, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for chunk in chunks:
                writer.write(chunk)
                if len(chunk) % 7 == 0:
                    await asyncio.sleep(0)
            await writer.drain()
            writer.write_eof()  # the echo server closes on EOF; its close comes back as EOF
            received = await reader.read()
            writer.close()
            await writer.wait_closed()
            await _settle(proxy, "h", 1)
            return received

    assert asyncio.run(main()) == b"".join(chunks)


def test_a_client_that_waits_for_each_answer_costs_a_turn_per_answer() -> None:
    async def main() -> tuple[Counts, list[list[list[int]]]]:
        async with proxied(_greeter, 0.02) as (proxy, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"v1\n")  # the client's greeting, sent without waiting
            assert await reader.readline() == b"hello\n"
            assert await reader.readline() == b"v1\n"
            for k in range(4):  # four strict question-answer exchanges
                writer.write(b"q%d\n" % k)
                assert await reader.readline() == b"q%d\n" % k
            for k in range(5):  # five questions at once: pipelined, one turn
                writer.write(b"p%d\n" % k)
            for k in range(5):
                assert await reader.readline() == b"p%d\n" % k
            writer.close()
            await writer.wait_closed()
            await _settle(proxy, "h", 1)
            return proxy.counts["h"], [t.turns for t in proxy.conversations["h"]]

    counts, log = asyncio.run(main())
    assert counts.connections == 1
    # the greeting exchange (the host's hello and the echoed v1 may come as one burst or two,
    # with no client bytes between them: one turn), 4 exchanges, 1 pipelined batch
    assert counts.turns == 1 + 4 + 1, log
    assert counts.round_trips == counts.connections + counts.turns
    assert counts.bytes_to_host == 3 + 4 * 3 + 5 * 3
    assert counts.bytes_to_client == 6 + 3 + 4 * 3 + 5 * 3
    assert log[0][1:5] == [[3, 3], [3, 3], [3, 3], [3, 3]]
    assert log[0][5] == [15, 15]


def test_every_connection_is_counted_for_its_host_and_reset_zeroes() -> None:
    async def main() -> tuple[Counts, Counts]:
        async with proxied(_echo, 0.0) as (proxy, port):
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"x\n")
                assert await reader.readline() == b"x\n"
                writer.close()
                await writer.wait_closed()
            await _settle(proxy, "h", 3)
            before = proxy.counts["h"]
            proxy.reset()
            return before, proxy.counts["h"]

    before, after = asyncio.run(main())
    assert (before.connections, before.turns) == (3, 3)
    assert after == Counts()


def test_a_turn_is_client_bytes_then_host_bytes() -> None:
    talk = Conversation(Counts())
    to_host, to_client = Direction.TO_HOST, Direction.TO_CLIENT
    talk.heard(to_client, 10)  # the host speaks first: no question yet, no turn
    for direction, size in [(to_host, 5), (to_host, 7), (to_client, 3), (to_client, 4)]:
        talk.heard(direction, size)
    talk.heard(to_host, 1)
    talk.heard(to_client, 2)
    talk.heard(to_host, 9)  # a question with no answer yet: no turn
    assert talk.counts == Counts(connections=0, turns=2, bytes_to_host=22, bytes_to_client=19)
    assert talk.turns == [[12, 7], [1, 2]]


def test_the_command_lines_set_the_rtt_reset_and_report() -> None:
    proxy = DelayProxy({"a": ("127.0.0.2", 22), "b": ("127.0.0.3", 22)})
    proxy.counts["a"].turns = 4
    assert answer(proxy, "rtt 80\n") == {"rtt_ms": 80.0}
    assert proxy.rtt == 0.08
    assert answer(proxy, "counts")["a"] == {
        "connections": 0,
        "turns": 4,
        "bytes_to_host": 0,
        "bytes_to_client": 0,
    }
    assert answer(proxy, "reset") == {"reset": True}
    assert answer(proxy, "counts")["a"]["turns"] == 0
    assert answer(proxy, "log") == {"a": [], "b": []}
    assert "unknown command" in str(answer(proxy, "jump")["error"])
