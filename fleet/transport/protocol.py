"""What runs on the host: the persistent-shell protocol, rendered and parsed without any I/O.

A session keeps one `sh` open on the host. Its first line (`ready_command`) sends the shell's
own stderr to /dev/null, checks that `setsid` exists and prints an End marker; then each
command is written to its stdin as one line (`wrap_command`; shown on three), for SCRIPT:

    setsid -w sh -c 'exec </dev/null 2>&1; printf "\\036TOKEN:B:%s\\n" "$$"
    SCRIPT' sh 8>&-; printf '\\036TOKEN:E:%s\\n' "$?"

* `setsid -w` puts the command in a new session and process group, so that a timeout or a
  cancel kills everything it started (`kill_script`) and nothing else. (Plain `setsid` forks
  and returns 0 at once when its caller leads a process group; `-w` waits and passes on the
  exit status.)
* The group leader redirects its own stdin (from /dev/null, so a command never eats the
  shell's input) and stderr (merged into stdout) and reports its pgid (the Begin marker), then
  runs SCRIPT: `sh -c` runs its string a line at a time, so the first line has run before
  SCRIPT is parsed, and even a syntax error in it comes after the Begin marker. SCRIPT sees
  the semantics of `sh -c SCRIPT` (`$0` is `sh`, no arguments), in one process fewer than an
  `exec sh -c` would take.
* The persistent shell applies no redirection of its own to the command's stdio, so that its
  notes about the command ("Terminated", which dash writes to the redirected stderr of the
  command it waits for) go to its own, silenced, stderr: the output is the command's, byte
  for byte, and the exit status (128 + signal for a killed command) is in the End marker. It
  closes only descriptor 8, the host lock's (`host_lock_command`), which no command inherits.

A marker is `\\036` (ASCII record separator), the session's random token, `:B:` or `:E:`, a
decimal number and a newline. Output is everything else, byte for byte: the End marker does
not start with a newline of its own, so output that does not end in one is delimited all the
same, and none of it has to be held back waiting to see whether a marker follows.
`MarkerParser` splits the stream into `Output`, `Begin` and `End` events.
"""

from __future__ import annotations

import secrets
import shlex
from dataclasses import dataclass

from fleet.models import Privilege

RS = b"\x1e"  # the first byte of every marker
SIGNALS = frozenset({"TERM", "KILL", "INT", "HUP", "QUIT", "CONT"})
_MAX_NUMBER = 20  # digits a marker's number may have
LOCK_FD = 8  # the persistent shell's descriptor of the host lock file (`host_lock_command`)


def new_token() -> str:
    """A session's marker token: random, so that no command output can forge a marker."""
    return secrets.token_hex(16)


def wrap_command(script: str, token: str) -> str:
    """The line written to the persistent shell to run `script` (a raw shell fragment)."""
    leader = f"exec </dev/null 2>&1; printf '\\036%s:B:%s\\n' {token} \"$$\"\n"
    return (
        f"setsid -w sh -c {shlex.quote(leader + script)} sh {LOCK_FD}>&-; "
        f"printf '\\036%s:E:%s\\n' {token} \"$?\"\n"
    )


def ready_command(token: str, lock: HostLock | None = None) -> str:
    """The first line a new shell gets: it silences the shell's own stderr, then prints an
    End marker (which tells where the login's own output, a banner or an rc file's noise,
    ends) whose status says whether `setsid` is installed (0) or not.

    With `lock`, the shell also takes the host lock (`host_lock_command`) and the marker's
    status is `LOCKED` when another session holds it."""
    if lock is not None:
        return host_lock_command(token, lock)
    return (
        f"exec 2>/dev/null; command -v setsid >/dev/null; printf '\\036%s:E:%s\\n' {token} \"$?\"\n"
    )


LOCKED = 75  # the ready marker's status when another session holds the host lock
HOLDER_PREFIX = "fleet-lock-holder: "  # the line before that marker that names the holder


@dataclass(frozen=True)
class HostLock:
    """The lock a session holds on its host for as long as its persistent shell lives.

    `path` is a file in the host's run_dir (one lock per host, even where hosts share a
    machine); `holder` is one line naming who holds it (shown to whoever is refused); `owner`
    is the session's own random id, which lets a reconnecting session take back the lock that
    its dropped shell still holds.
    """

    path: str
    holder: str
    owner: str


def host_lock_command(token: str, lock: HostLock) -> str:
    """The ready line of a session that takes the host lock.

    The persistent shell opens the lock file as descriptor `LOCK_FD` and `flock -n` locks it:
    the lock belongs to that open file, so the shell holds it until it exits (when the session
    closes or its connection goes away and the shell reads EOF, also after the controller was
    SIGKILLed), and no command inherits it (`wrap_command` closes the descriptor). The shell
    writes the holder, the owner id and its own pid into the lock file. When the lock is taken
    (flock exits `LOCKED`), the shell prints the holder's line and a `LOCKED` marker instead;
    when the holder is this session's own dropped shell (same owner), it kills that shell and
    waits for the lock. Without `flock`, or when run_dir cannot be written, the shell goes on
    unlocked (status 0). Everything but `flock` (and `mkdir` for a new run_dir) is built in.
    """
    owner = shlex.quote(lock.owner)
    fd = LOCK_FD
    steps = [
        f"exec 2>/dev/null; l={shlex.quote(lock.path)}; s=0",
        "command -v setsid >/dev/null || s=1",
        'd=${l%/*}; [ -d "$d" ] || mkdir -p -- "$d"',
        # (`true`, not `:` or `exec`: a failed redirection of a special built-in would end the
        # shell; once `true` could open the file for appending, `exec` can too)
        'if [ $s = 0 ] && command -v flock >/dev/null && true >> "$l"',
        f'then exec {fd}>>"$l"; flock -n -E {LOCKED} {fd}; s=$?',
        f'if [ $s = {LOCKED} ]; then {{ read -r h; read -r o; read -r p; }} < "$l"',
        f'if [ "$o" = {owner} ]; then kill "$p"; flock -w 3 -E {LOCKED} {fd}; s=$?; fi; fi',
        f"if [ $s = {LOCKED} ]; then printf '{HOLDER_PREFIX}%s\\n' \"$h\"; exec {fd}>&-",
        f'elif [ $s = 0 ]; then printf \'%s\\n\' {shlex.quote(lock.holder)} {owner} "$$" > "$l"',
        f"else s=0; exec {fd}>&-; fi",  # flock could not lock that file: go on unlocked
        "fi",
        f"printf '\\036%s:E:%s\\n' {token} \"$s\"",
    ]
    return "; ".join(steps) + "\n"


def holder_of(preamble: bytes) -> str:
    """Who holds the host lock, from what a refused session printed before its marker."""
    prefix = HOLDER_PREFIX.encode()
    for line in reversed(preamble.splitlines()):
        if line.startswith(prefix):
            holder = line[len(prefix) :].decode(errors="replace").strip()
            return holder or "another fleet session (it did not say which)"
    return "another fleet session (it did not say which)"


def kill_argv(pgid: int, signal: str = "TERM", *, privilege: Privilege | None = None) -> list[str]:
    """The argv that sends `signal` to the process group `pgid` (through `privilege`)."""
    if signal not in SIGNALS:
        raise ValueError(f"signal {signal!r} is not one of {', '.join(sorted(SIGNALS))}")
    if pgid < 2:  # `kill -- -1` would signal every process the user may signal
        raise ValueError(f"refusing to signal process group {pgid}")
    argv = ["kill", "-s", signal, "--", f"-{pgid}"]
    return privilege.argv(argv) if privilege is not None else argv


def kill_script(pgid: int, signal: str = "TERM", *, privilege: Privilege | None = None) -> str:
    """`kill -s TERM -- -PGID` (the form dash, bash and procps all accept), quoted for sh."""
    return shlex.join(kill_argv(pgid, signal, privilege=privilege))


@dataclass(frozen=True)
class Output:
    data: bytes


@dataclass(frozen=True)
class Begin:
    pgid: int


@dataclass(frozen=True)
class End:
    exit_code: int


Event = Output | Begin | End


class MarkerParser:
    """Splits a shell's stdout into output and markers, one chunk at a time.

    Memory stays bounded whatever the output's size: only the start of a marker that a chunk
    boundary cut (at most a marker's length) is held back for the next chunk; every other byte
    is returned as `Output` right away. Markers are found with `bytes.find`.
    """

    def __init__(self, token: str) -> None:
        self._prefix = RS + token.encode("ascii") + b":"
        self._pending = b""

    @property
    def pending(self) -> int:
        """How many bytes are held back for the next chunk."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[Event]:
        buf = self._pending + data if self._pending else data
        prefix = self._prefix
        events: list[Event] = []
        out = search = (
            0  # output not yet returned starts at `out`; markers are looked for at `search`
        )
        while True:
            start = buf.find(prefix, search)
            if start < 0:
                hold = len(buf) - self._partial_prefix(buf, search)
                break
            body = start + len(prefix)
            newline = buf.find(b"\n", body, body + _MAX_NUMBER + 3)
            if newline < 0 and len(buf) - body <= _MAX_NUMBER + 2:
                hold = start  # a marker cut by the chunk boundary
                break
            event = _parse_marker(buf[body:newline]) if newline >= 0 else None
            if event is None:  # looked like a marker but is not one: it is output
                search = start + 1
                continue
            if start > out:
                events.append(Output(buf[out:start]))
            events.append(event)
            out = search = newline + 1
        if hold > out:
            events.append(Output(buf[out:hold]))
        self._pending = buf[hold:]
        return events

    def flush(self) -> list[Event]:
        """At EOF: what was held back is output after all."""
        pending, self._pending = self._pending, b""
        return [Output(pending)] if pending else []

    def _partial_prefix(self, buf: bytes, start: int) -> int:
        """The length of the tail of `buf[start:]` that could begin a marker."""
        first = buf.rfind(RS, max(start, len(buf) - len(self._prefix) + 1))
        if first >= 0 and self._prefix.startswith(buf[first:]):
            return len(buf) - first
        return 0


def _parse_marker(body: bytes) -> Begin | End | None:
    kind, sep, number = body.partition(b":")
    if not sep or not number.isdigit():
        return None
    if kind == b"B":
        return Begin(int(number))
    if kind == b"E":
        return End(int(number))
    return None
