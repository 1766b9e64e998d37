"""fleet.transport.protocol: the wrapping written to the persistent shell and the marker parser."""

from __future__ import annotations

import subprocess
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.models import Host, Privilege
from fleet.transport import protocol
from fleet.transport.protocol import Begin, End, MarkerParser, Output

TOKEN = "0123456789abcdef0123456789abcdef"


def b_marker(pgid: int) -> bytes:
    return f"\x1e{TOKEN}:B:{pgid}\n".encode()


def e_marker(code: int) -> bytes:
    return f"\x1e{TOKEN}:E:{code}\n".encode()


def merged(events: list[protocol.Event]) -> list[protocol.Event]:
    """Events with adjacent Output events joined (chunking may split output anywhere)."""
    out: list[protocol.Event] = []
    for event in events:
        if isinstance(event, Output) and out and isinstance(out[-1], Output):
            out[-1] = Output(out[-1].data + event.data)
        elif not (isinstance(event, Output) and not event.data):
            out.append(event)
    return out


def parse_in_chunks(stream: bytes, cuts: list[int]) -> list[protocol.Event]:
    parser = MarkerParser(TOKEN)
    events: list[protocol.Event] = []
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        events += parser.feed(stream[last:cut])
        last = cut
    events += parser.flush()
    assert parser.pending == 0
    return merged(events)


# ---------------------------------------------------------------------------------------------
# Rendering


def test_wrap_command_renders_one_line() -> None:
    expected = r"""setsid -w sh -c 'exec </dev/null 2>&1; printf '"'"'\036%s:B:%s\n'"'"' tok "$$"
echo '"'"'hi'"'"'' sh 8>&-; printf '\036%s:E:%s\n' tok "$?"
"""
    assert protocol.wrap_command("echo 'hi'", "tok") == expected


def test_ready_command() -> None:
    assert protocol.ready_command("tok") == (
        r"""exec 2>/dev/null; command -v setsid >/dev/null; printf '\036%s:E:%s\n' tok "$?"
"""
    )


def test_wrapped_command_runs_in_sh_and_reports_markers() -> None:
    script = "echo out; echo err >&2; printf 'no newline'; exit 7"
    shell = subprocess.run(
        ["sh"], input=protocol.wrap_command(script, TOKEN).encode(), capture_output=True, check=True
    )
    events = parse_in_chunks(shell.stdout, [])
    assert isinstance(events[0], Begin)
    assert events[1:] == [Output(b"out\nerr\nno newline"), End(7)]
    assert shell.stderr == b""


def test_the_script_runs_in_the_group_leader_with_sh_c_semantics() -> None:
    """The script runs as the group leader (`$$` is the pgid the Begin marker gave) and sees
    `sh -c SCRIPT`'s `$0` and no arguments. (An `exec sh -c` in between would keep the pid
    too: that the leader runs the script itself is pinned by the exact line above.)"""
    shell = subprocess.run(
        ["sh"],
        input=protocol.wrap_command('echo "$$ $0 $#"; cut -d" " -f5 /proc/$$/stat', TOKEN).encode(),
        capture_output=True,
        check=True,
    )
    begin, output, end = parse_in_chunks(shell.stdout, [])
    assert isinstance(begin, Begin) and isinstance(output, Output) and end == End(0)
    pid, zero, count, pgid = output.data.split()
    assert int(pid) == int(pgid) == begin.pgid
    assert (zero, count) == (b"sh", b"0")


def test_a_syntax_error_comes_after_the_begin_marker() -> None:
    shell = subprocess.run(
        ["sh"], input=protocol.wrap_command("if", TOKEN).encode(), capture_output=True, check=True
    )
    events = parse_in_chunks(shell.stdout, [])
    assert isinstance(events[0], Begin)
    assert isinstance(events[1], Output) and b"ntax error" in events[1].data
    assert events[2] == End(2)


def test_ready_command_prints_an_end_marker_and_silences_the_shell() -> None:
    script = protocol.ready_command(TOKEN) + protocol.wrap_command("kill -s TERM $$", TOKEN)
    shell = subprocess.run(["sh"], input=script.encode(), capture_output=True, check=True)
    events = parse_in_chunks(shell.stdout, [])
    assert events[0] == End(0)
    assert isinstance(events[1], Begin)
    assert events[2:] == [End(143)]  # without the shell's "Terminated"
    assert shell.stderr == b""


def test_kill_argv() -> None:
    assert protocol.kill_argv(1234) == ["kill", "-s", "TERM", "--", "-1234"]
    assert protocol.kill_argv(1234, "KILL") == ["kill", "-s", "KILL", "--", "-1234"]
    sudo = Privilege.of(Host(name="h", address="h", hostname="h", user="deploy", sudo=True))
    assert protocol.kill_argv(99, "INT", privilege=sudo) == [
        "sudo",
        "-n",
        "kill",
        "-s",
        "INT",
        "--",
        "-99",
    ]
    assert protocol.kill_script(99, privilege=sudo) == "sudo -n kill -s TERM -- -99"
    assert protocol.kill_script(99, privilege=Privilege()) == "kill -s TERM -- -99"


@pytest.mark.parametrize("signal", ["STOP", "TERM; rm -rf /", "", "term", "9"])
def test_kill_refuses_signals_outside_the_allowlist(signal: str) -> None:
    with pytest.raises(ValueError, match="signal"):
        protocol.kill_argv(1234, signal)


@pytest.mark.parametrize("pgid", [1, 0, -5])
def test_kill_refuses_groups_that_mean_everything(pgid: int) -> None:
    with pytest.raises(ValueError, match="process group"):
        protocol.kill_argv(pgid)


def test_tokens_are_random_hex() -> None:
    tokens = {protocol.new_token() for _ in range(10)}
    assert len(tokens) == 10
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)


# ---------------------------------------------------------------------------------------------
# Parsing

STREAM = (
    b"banner\n"
    + e_marker(0)
    + b_marker(4242)
    + b"line 1\n\x1epartial \x1e"
    + TOKEN[:5].encode()
    + b" not a marker\n"
    + b"\xff\xfe\x00binary"
    + e_marker(3)
    + b_marker(4243)
    + e_marker(0)
    + b_marker(4244)
    + b"last, no newline"
    + e_marker(130)
)
EXPECTED = [
    Output(b"banner\n"),
    End(0),
    Begin(4242),
    Output(b"line 1\n\x1epartial \x1e" + TOKEN[:5].encode() + b" not a marker\n\xff\xfe\x00binary"),
    End(3),
    Begin(4243),
    End(0),
    Begin(4244),
    Output(b"last, no newline"),
    End(130),
]


def test_parser_on_one_chunk() -> None:
    assert parse_in_chunks(STREAM, []) == EXPECTED


def test_parser_with_a_split_at_every_offset() -> None:
    for cut in range(len(STREAM) + 1):
        assert parse_in_chunks(STREAM, [cut]) == EXPECTED, cut


def test_parser_byte_by_byte() -> None:
    assert parse_in_chunks(STREAM, list(range(len(STREAM)))) == EXPECTED


def test_parser_returns_output_at_once_and_holds_back_only_a_cut_marker() -> None:
    parser = MarkerParser(TOKEN)
    assert parser.feed(b"abc\n") == [Output(b"abc\n")]  # a trailing newline is not held back
    assert parser.feed(b"def\x1e" + TOKEN[:10].encode()) == [Output(b"def")]
    assert parser.pending == 11
    assert parser.feed(TOKEN[10:].encode() + b":E:") == []
    assert parser.feed(b"5\nrest") == [End(5), Output(b"rest")]
    assert parser.pending == 0


def test_parser_ignores_markers_of_another_token_and_malformed_ones() -> None:
    other = protocol.new_token()
    data = (
        f"\x1e{other}:E:0\n".encode()
        + f"\x1e{TOKEN}:X:1\n".encode()
        + f"\x1e{TOKEN}:E:abc\n".encode()
        + f"\x1e{TOKEN}:E:{'9' * 40}\n".encode()
    )
    assert parse_in_chunks(data, []) == [Output(data)]
    for cut in range(len(data) + 1):
        assert parse_in_chunks(data, [cut]) == [Output(data)]


@given(
    pieces=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([b"\x1e", b"\n", b"\x1e" + TOKEN[:7].encode(), b":E:1\n"]),
            st.integers(min_value=0, max_value=255).map(e_marker),
            st.integers(min_value=2, max_value=10**9).map(b_marker),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_parser_property_chunking_never_changes_the_events(
    pieces: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(pieces)
    cuts = [c for c in cuts if c <= len(stream)]
    assert parse_in_chunks(stream, cuts) == parse_in_chunks(stream, [])
    outputs = b"".join(e.data for e in parse_in_chunks(stream, []) if isinstance(e, Output))
    markers = b"".join(p for p in pieces if p.startswith(b"\x1e" + TOKEN.encode()))
    assert len(outputs) + len(markers) == len(stream)


def test_parser_is_fast_and_bounded_on_50_mb() -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB, with \x1e and newlines in it
    parser = MarkerParser(TOKEN)
    total = 0
    started = time.perf_counter()
    for _ in range(800):
        for event in parser.feed(chunk):
            assert isinstance(event, Output)
            total += len(event.data)
        assert parser.pending <= len(TOKEN) + 2
    events = parser.feed(e_marker(0))
    elapsed = time.perf_counter() - started
    total += sum(len(e.data) for e in events if isinstance(e, Output))
    assert events[-1] == End(0)
    assert total == 800 * len(chunk)
    assert elapsed < 2.0
