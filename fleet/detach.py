"""Scripts for ops that must outlive their SSH session (switch, rollback, force-rebuild).

A detached op runs in a run directory on the host, `<run_dir>/<run_id>/<op>.<attempt>/`:

    pid   the id of the detached shell, which leads its own process group
    out   the command's whole output (stdout and stderr)
    rc    its exit status, written (atomically, via rc.tmp) when it ends

`launch` starts it (as a transient systemd unit, or with setsid in a double fork so that no
shell of ours is its parent), `follow` streams `out` from a byte offset until the process is
gone (run again after a reconnect, from the bytes already received), `finish` reads `rc` and
the system profile. `cancel` stops the build unless activation has begun.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from fleet.models import Detach, Host

ACTIVATION_MARKERS = ("activating the configuration", "switch-to-configuration")


@dataclass(frozen=True)
class Launched:
    pid: int | None
    method: str
    system_before: str | None


def run_directory(host: Host, run_id: str, op_id: str, attempt: int) -> str:
    return f"{host.run_dir}/{run_id}/{op_id}.{attempt}"


def unit_name(run_id: str, op_id: str, attempt: int) -> str:
    return f"fleet-{run_id}-{op_id}-{attempt}".replace("_", "-")


def inner_script() -> str:
    """The detached shell's program: `sh -c INNER sh DIR ARGV...`."""
    return (
        'd=$1; shift; echo $$ > "$d/pid"; "$@" > "$d/out" 2>&1; '
        'echo $? > "$d/rc.tmp"; mv "$d/rc.tmp" "$d/rc"'
    )


def launch_script(
    host: Host, directory: str, argv: Sequence[str], *, unit: str, detach: Detach | None = None
) -> str:
    """Record the system profile, start `argv` detached, print `before=`, `method=`, `pid=`."""
    mode = detach or host.detach
    d = shlex.quote(directory)
    inner = shlex.join(["sh", "-c", inner_script(), "sh", directory, *argv])
    systemd = shlex.join(
        ["systemd-run", "--quiet", "--collect", f"--unit={unit}", "--service-type=exec"]
    )
    use_systemd = {
        Detach.SYSTEMD_RUN: "true",
        Detach.SETSID: "false",
        Detach.AUTO: '[ -d /run/systemd/system ] && [ "$(id -u)" = 0 ] '
        "&& command -v systemd-run >/dev/null",
    }[mode]
    return f"""\
d={d}
mkdir -p "$d" && rm -f "$d/pid" "$d/out" "$d/rc" "$d/rc.tmp" || exit 1
readlink -f {shlex.quote(host.system_profile)} > "$d/before" 2>/dev/null
printf 'before=%s\\n' "$(cat "$d/before")"
if {use_systemd}; then
  echo method=systemd-run
  {systemd} --setenv=PATH="$PATH" -- {inner} || exit 1
else
  echo method=setsid
  (setsid {inner} </dev/null >/dev/null 2>&1 &)
fi
i=0; while [ ! -s "$d/pid" ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done
printf 'pid=%s\\n' "$(cat "$d/pid" 2>/dev/null)"
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
    values = dict(re.findall(r"^(before|method|pid)=(.*)$", text, re.M))
    pid = values.get("pid", "").strip()
    return Launched(
        pid=int(pid) if pid.isdigit() else None,
        method=values.get("method", "?"),
        system_before=values.get("before", "").strip() or None,
    )


def follow_script(directory: str, pid: int, offset: int) -> str:
    """Stream `out` from byte `offset` until the detached process has ended.

    `tail --pid` alone would wait on a zombie until something reaps it (the detached shell's
    parent is init, which may reap late), so a watcher ends the follow as soon as `rc` exists
    or the process is gone or a zombie; tail then prints what is left and exits.
    """
    d = shlex.quote(directory)
    alive = (
        f"kill -0 {pid} 2>/dev/null && "
        f"[ \"$(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -c1)\" != Z ]"
    )
    return (
        f"d={d}\n"
        f'(while [ ! -e "$d/rc" ] && {alive}; do sleep 0.1; done) &\n'
        f'tail -s 0.1 -c +{offset + 1} --pid=$! -f "$d/out"\n'
    )


def finish_script(host: Host, directory: str) -> str:
    """Print `rc=` (empty when the process was killed) and `after=`."""
    return (
        f"printf 'rc=%s\\n' \"$(cat {shlex.quote(directory + '/rc')} 2>/dev/null)\"; "
        f"printf 'after=%s\\n' \"$(readlink -f {shlex.quote(host.system_profile)} 2>/dev/null)\""
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
        f"elif kill -0 {pid} 2>/dev/null; then kill -TERM -- -{pid}; echo stopped; "
        "else echo finished; fi"
    )
