"""Scripts for ops that must outlive their SSH session (switch, rollback, force-rebuild).

A detached op runs in a run directory on the host, `<run_dir>/<run_id>/<op>.<attempt>/`:

    pid   the id of the detached shell, which leads its own process group
    lock  a file the detached shell holds a lock on (flock) for as long as it lives
    out   the command's whole output (stdout and stderr)
    rc    its exit status, written in one small write as the shell ends; `finish` reads it
          only after `follow` has seen the shell end (or `rc` non-empty), so never half-written

and one file per host, `<run_dir>/switch.lock`: the detached shell of every switch, rollback
and force-rebuild holds a lock on it (flock) for as long as it lives, whoever started it and
whether or not that controller still watches it, and names its run in it (`run R, OP attempt
N`). A launch that finds it held waits for it (`wait` seconds, saying so on a `waiting=` line)
and, when it is still held, starts nothing and prints `busy=` with the holder: one detached
switch per host at a time, ever (a killed controller's orphan, a retry's previous attempt, or
another controller's switch).

`launch` starts it (as a transient systemd unit, or with setsid in a double fork so that no
shell of ours is its parent), `follow` streams `out` from a byte offset until the process is
gone (run again after a reconnect, from the bytes already received), `finish` reads `rc` and
the system profile. `cancel` stops the build unless activation has begun.

`run_script` does all three in one command (one round trip instead of three), with a random
delimiter line after the launch's lines and another after the output, which `DetachedStream`
splits; the separate scripts are for picking up again after a dropped connection. `follow`
waits for the lock (`flock`), so that it ends as soon as the detached shell has, without
polling; where `flock` is missing it polls every 0.1 s instead.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleet.models import Detach, Host

ACTIVATION_MARKERS = ("activating the configuration", "switch-to-configuration")
FOLLOW_INTERVAL = 0.02  # how often `tail --pid` checks that the waiter is still there (at
# most this much latency after the end; a check is one `kill(pid, 0)`)


@dataclass(frozen=True)
class Launched:
    pid: int | None
    method: str
    system_before: str | None
    busy: str | None = None  # who held the switch lock when the launch gave up waiting


def run_directory(host: Host, run_id: str, op_id: str, attempt: int) -> str:
    return f"{host.run_dir}/{run_id}/{op_id}.{attempt}"


def unit_name(run_id: str, op_id: str, attempt: int) -> str:
    return f"fleet-{run_id}-{op_id}-{attempt}".replace("_", "-")


def switch_lock(host: Host) -> str:
    """The host's one switch lock, held by the detached shell of whatever switch runs."""
    return f"{host.run_dir}/switch.lock"


def inner_script() -> str:
    """The detached shell's program: `sh -c INNER sh DIR HELD SWITCHLOCK HOLDER ARGV...`.
    It holds both locks to the end: the ones it inherits (HELD=1: the launch took them for
    it) or ones it takes (waiting for the switch lock) before it writes `pid`; the command
    itself inherits neither."""
    return (
        'd=$1; h=$2; s=$3; w=$4; shift 4; [ "$h" = 1 ] || { exec 9>>"$d/lock"; '
        'flock 9 2>/dev/null; exec 7>>"$s"; flock 7 2>/dev/null; '
        """printf '%s\\n' "$w" > "$s"; }; """
        'echo $$ > "$d/pid"; "$@" > "$d/out" 2>&1 7>&- 9>&-; echo $? > "$d/rc"'
    )


def wait_switch_lines(host: Host, holder: str, wait: int) -> str:
    """Shell (in the launch): take the host's switch lock as descriptor 7, waiting up to
    `wait` seconds for a switch that holds it (printing `waiting=HOLDER` first), or print
    `busy=HOLDER` and exit 1. Without `flock`, or a lock file it cannot open, it goes on."""
    s = shlex.quote(switch_lock(host))
    return f"""\
if command -v flock >/dev/null && true >> {s}; then
  exec 7>>{s}
  if ! flock -n 7; then
    o=; read -r o < {s}; printf 'waiting=%s\\n' "$o"
    if ! flock -w {wait} 7; then o=; read -r o < {s}; printf 'busy=%s\\n' "$o"; exit 1; fi
  fi
  printf '%s\\n' {shlex.quote(holder)} > {s}
fi
"""


def resolve_path(var: str, path: str) -> str:
    """Shell: set `var` to where `path` (a directory, such as a system profile) resolves, or
    to nothing; `readlink -f` without a process (`cd -P` and `$PWD` are the shell's own)."""
    return (
        f"{var}=; o=$PWD; if cd -P -- {shlex.quote(path)} 2>/dev/null; then {var}=$PWD; "
        'cd -- "$o" 2>/dev/null || cd /; fi'
    )


def launch_script(
    host: Host,
    directory: str,
    argv: Sequence[str],
    *,
    unit: str,
    detach: Detach | None = None,
    holder: str = "",
    wait: int = 0,
) -> str:
    """Record the system profile, start `argv` detached, print `before=`, `method=`, `pid=`.

    It leaves `$d`, `$m` (the method) and `$p` (the pid) set for `run_script`. With setsid,
    the launch takes the lock and hands it down, and the pid is `$!` (setsid does not fork: a
    background job of a non-interactive shell does not lead a process group), so it waits for
    nothing; systemd-run starts the command elsewhere, so the launch waits for its `pid`.
    First it takes the host's switch lock (`wait_switch_lines`: `holder` names this switch
    in it, `wait` bounds the wait for another's), which the setsid shell inherits and the
    systemd unit takes again itself.
    """
    mode = detach or host.detach
    d = shlex.quote(directory)
    inner = {
        held: shlex.join(
            ["sh", "-c", inner_script(), "sh", directory, held, switch_lock(host), holder, *argv]
        )
        for held in ("0", "1")
    }
    systemd = shlex.join(
        ["systemd-run", "--quiet", "--collect", f"--unit={unit}", "--service-type=exec"]
    )
    use_systemd = {
        Detach.SYSTEMD_RUN: "true",
        Detach.SETSID: "false",
        Detach.AUTO: '[ -d /run/systemd/system ] && [ "$(id -u)" = 0 ] '
        "&& command -v systemd-run >/dev/null",
    }[mode]
    take_switch_lock = wait_switch_lines(host, holder, wait)
    return f"""\
d={d}
mkdir -p "$d" || exit 1
{take_switch_lock}for f in pid lock out rc; do [ ! -e "$d/$f" ] || rm -f -- "$d/$f" || exit 1; done
: > "$d/out" || exit 1
{resolve_path("b", host.system_profile)}
printf '%s\\n' "$b" > "$d/before"; printf 'before=%s\\n' "$b"
p=
if {use_systemd}; then
  m=systemd-run; echo method=$m; exec 7>&-
  {systemd} --setenv=PATH="$PATH" -- {inner["0"]} || exit 1
else
  m=setsid; echo method=$m
  exec 9>>"$d/lock"; flock 9 2>/dev/null
  setsid {inner["1"]} </dev/null >/dev/null 2>&1 & p=$!
  exec 9>&- 7>&-
fi
i=0; while [ -z "$p" ] && [ $i -lt 1500 ]; do
  if [ -s "$d/pid" ]; then read -r p < "$d/pid"; else sleep 0.02; i=$((i+1)); fi
done
printf 'pid=%s\\n' "$p"
"""


def recover_script(directory: str) -> str:
    """After a connection dropped during `launch`: what it left (it went on without us)."""
    return (
        f"d={shlex.quote(directory)}\n"
        'i=0; while [ ! -s "$d/pid" ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done\n'
        """printf 'before=%s\\nmethod=%s\\npid=%s\\n' "$(cat "$d/before" 2>/dev/null)" """
        """recovered "$(cat "$d/pid" 2>/dev/null)"\n"""
    )


def parse_launch(output: bytes) -> Launched:
    text = output.decode("utf-8", "replace")
    values = dict(re.findall(r"^(before|method|pid|busy)=(.*)$", text, re.M))
    pid = values.get("pid", "").strip()
    return Launched(
        pid=int(pid) if pid.isdigit() else None,
        method=values.get("method", "?"),
        system_before=values.get("before", "").strip() or None,
        busy=values["busy"].strip() or "another switch" if "busy" in values else None,
    )


def waiting_for(head: bytes) -> str | None:
    """Whose switch a launch is waiting for (its `waiting=` line), if it is waiting."""
    found = re.search(rb"^waiting=(.*)$", head, re.M)
    return found[1].decode("utf-8", "replace").strip() or "another switch" if found else None


def follow_script(directory: str, pid: int, offset: int) -> str:
    """Stream `out` from byte `offset` until the detached process has ended.

    `tail --pid` alone would wait on a zombie until something reaps it (the detached shell's
    parent is init, which may reap late), so a waiter ends the follow as soon as the detached
    shell has: `flock` on its lock (released when it exits, zombie or not), or, without
    `flock` or the lock file, a loop that polls until `rc` is written or the process is gone or a
    zombie; tail then prints what is left and exits.
    """
    return f"d={shlex.quote(directory)}\n" + _follow_lines(str(pid), offset)


def _follow_lines(pid: str, offset: int) -> str:
    """The follow, for `$d` and a pid given as a shell word (a number or `"$p"`)."""
    alive = (
        f"kill -0 {pid} 2>/dev/null && "
        f"[ \"$(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -c1)\" != Z ]"
    )
    poll = f'while [ ! -s "$d/rc" ] && {alive}; do sleep 0.1; done'
    return (
        'if [ -e "$d/lock" ] && command -v flock >/dev/null; then flock "$d/lock" true &\n'
        f"else ({poll}) & fi\n"
        f'tail -s {FOLLOW_INTERVAL:g} -c +{offset + 1} --pid=$! -f "$d/out"\n'
    )


def run_script(
    host: Host,
    directory: str,
    argv: Sequence[str],
    *,
    unit: str,
    delimiter: str,
    detach: Detach | None = None,
    holder: str = "",
    wait: int = 0,
) -> str:
    """launch, follow and finish in one command; `DetachedStream(delimiter)` splits its output.

    It stops after the launch's lines (exit 1) when the command could not be started."""
    launched, finished = (shlex.quote(f"{delimiter}:{part}") for part in ("launched", "finished"))
    # With setsid the detached shell is this shell's child, which reaps it as soon as it
    # ends (while it waits for tail), so tail can watch it directly.
    follow_child = f'tail -s {FOLLOW_INTERVAL:g} -c +1 --pid="$p" -f "$d/out"\n'
    return (
        launch_script(host, directory, argv, unit=unit, detach=detach, holder=holder, wait=wait)
        + '[ -n "$p" ] || exit 1\n'
        + f"printf '%s\\n' {launched}\n"
        + f'if [ "$m" = setsid ]; then {follow_child}else\n'
        + _follow_lines('"$p"', 0)
        + "fi\n"
        + f"printf '%s\\n' {finished}\n"
        + finish_script(host, directory)
        + "\n"
    )


def new_delimiter() -> str:
    """A random line for `run_script`, which no output can forge."""
    return f"fleet-detach-{secrets.token_hex(12)}"


@dataclass
class DetachedStream:
    """Splits what `run_script` prints, chunk by chunk: the launch's lines (`launched`, once
    its delimiter came), the command's output (what `feed` returns; `output_bytes` counts it,
    the offset to follow from after a reconnect), then the finish's lines (`finish`)."""

    delimiter: str
    launched: Launched | None = None
    finished: bool = False
    output_bytes: int = 0
    head: bytes = b""  # the launch's lines, until the first delimiter
    finish: bytes = b""  # what came after the second delimiter
    _pending: bytes = field(default=b"", repr=False)  # output that may begin the delimiter

    def feed(self, data: bytes) -> bytes:
        """Take the next chunk; return the part of it that is the command's output."""
        if self.finished:
            self.finish += data
            return b""
        if self.launched is None:
            self.head += data
            mark = f"{self.delimiter}:launched\n".encode()
            at = self.head.find(mark)
            if at < 0:
                return b""
            data, self.head = self.head[at + len(mark) :], self.head[:at]
            self.launched = parse_launch(self.head)
        buf = self._pending + data
        mark = f"{self.delimiter}:finished\n".encode()
        at = buf.find(mark)
        if at >= 0:
            self.finished = True
            self.finish = buf[at + len(mark) :]
            out, self._pending = buf[:at], b""
        else:
            cut = len(buf) - _partial_mark(buf, mark)
            out, self._pending = buf[:cut], buf[cut:]
        self.output_bytes += len(out)
        return out


def _partial_mark(buf: bytes, mark: bytes) -> int:
    """The length of the longest end of `buf` that begins `mark` (held back for later)."""
    for k in range(min(len(mark) - 1, len(buf)), 0, -1):
        if buf.endswith(mark[:k]):
            return k
    return 0


def finish_script(host: Host, directory: str) -> str:
    """Print `rc=` (empty when the process was killed) and `after=`."""
    return (
        f"r=; read -r r 2>/dev/null < {shlex.quote(directory + '/rc')}; printf 'rc=%s\\n' \"$r\"; "
        f"{resolve_path('a', host.system_profile)}; printf 'after=%s\\n' \"$a\""
    )


def parse_finish(output: bytes) -> tuple[int | None, str | None]:
    values = dict(re.findall(r"^(rc|after)=(.*)$", output.decode("utf-8", "replace"), re.M))
    rc = values.get("rc", "").strip()
    after = values.get("after", "").strip() or None
    return (int(rc) if rc.lstrip("-").isdigit() else None), after


def cancel_script(directory: str, pid: int) -> str:
    """Stop the build unless activation has begun; print which."""
    out = shlex.quote(f"{directory}/out")
    pattern = " ".join(f"-e {shlex.quote(m)}" for m in ACTIVATION_MARKERS)
    return (
        f"if grep -q {pattern} {out} 2>/dev/null; then echo activation-begun; "
        f"elif kill -0 {pid} 2>/dev/null && kill -s TERM -- -{pid} 2>/dev/null; "
        "then echo stopped; else echo finished; fi"  # (dash's kill refuses `-TERM --`)
    )
