"""OpRegistry and the built-in ops' command builders.

Builders are pure: they take a validated `Host` (or controller settings) and return argv lists,
or a shell script assembled from argv lists with `shlex.join`. Every value from the config
reaches the remote shell quoted; the few raw shell fragments (tests, guards) are written here,
never built from user input. `fleet run --dry-run` prints what these return, and the unit
tests assert them exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import string
from collections.abc import Iterator, Mapping, Sequence

from fleet.errors import ConfigError
from fleet.models import ControllerSettings, Host, Op, Privilege, Scope, is_valid_name

MINUTE = 60.0

BUILTIN_OPS: tuple[Op, ...] = (
    Op(
        "pull",
        "git fetch + fast-forward merge of the host's config checkout",
        timeout=5 * MINUTE,
        warn_after=2 * MINUTE,
    ),
    Op(
        "switch",
        "nixos-rebuild switch --flake <repo>#<attr>, detached",
        timeout=60 * MINUTE,
        warn_after=20 * MINUTE,
        switch_like=True,
    ),
    Op(
        "test",
        "run <repo>/hosts/<attr>/tests/*, or wait for systemd to be running",
        timeout=10 * MINUTE,
        warn_after=3 * MINUTE,
    ),
    Op(
        "rollback",
        "nixos-rebuild switch --rollback, detached",
        timeout=30 * MINUTE,
        warn_after=10 * MINUTE,
        switch_like=True,
    ),
    Op(
        "restart",
        "systemctl restart each loaded unit of restart_units",
        timeout=2 * MINUTE,
        warn_after=1 * MINUTE,
    ),
    Op(
        "force-rebuild",
        "switch with --refresh and no negative narinfo cache",
        timeout=90 * MINUTE,
        warn_after=30 * MINUTE,
        switch_like=True,
    ),
    Op(
        "merge-pr",
        "merge --pr N into the branch on the controller and push",
        scope=Scope.CONTROLLER,
        timeout=5 * MINUTE,
        warn_after=2 * MINUTE,
    ),
    Op(
        "bump-flake",
        "update the controller's flake input, commit flake.lock, push",
        scope=Scope.CONTROLLER,
        timeout=10 * MINUTE,
        warn_after=5 * MINUTE,
    ),
)

DETACHED_OPS = frozenset({"switch", "force-rebuild", "rollback"})
PLACEHOLDERS = ("name", "address", "repo", "branch", "flake_attr")
TUNABLE = ("timeout", "warn_after", "retries", "description")


class OpRegistry:
    """Ops by id: the built-ins, with the user's tunings, plus the user's own ops."""

    def __init__(self) -> None:
        self._ops: dict[str, Op] = {}

    @classmethod
    def with_builtins(cls) -> OpRegistry:
        registry = cls()
        for op in BUILTIN_OPS:
            registry.register(op)
        return registry

    def register(self, op: Op) -> None:
        where = f"ops.{op.id}"
        if not is_valid_name(op.id):
            raise ConfigError(f"{where}: invalid op name", key=where)
        if op.id in self._ops:
            raise ConfigError(f"{where}: duplicate op id {op.id!r}", key=where)
        if op.command is not None:
            check_placeholders(op.command, where=f"{where}.command")
        self._ops[op.id] = op

    def tune(self, op_id: str, **changes: object) -> None:
        """Change a built-in's timeout, warn_after, retries or description (nothing else)."""
        where = f"ops.{op_id}"
        op = self.get(op_id)
        for key in changes:
            if key not in TUNABLE:
                raise ConfigError(
                    f"{where}.{key}: a built-in op may change only {', '.join(TUNABLE)}",
                    key=f"{where}.{key}",
                )
        self._ops[op_id] = dataclasses.replace(op, **changes)  # type: ignore[arg-type]

    def get(self, op_id: str) -> Op:
        try:
            return self._ops[op_id]
        except KeyError:
            raise ConfigError(f"unknown op {op_id!r} (known: {', '.join(self._ops)})") from None

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._ops

    def __iter__(self) -> Iterator[Op]:
        return iter(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)


def check_placeholders(command: str, *, where: str) -> None:
    """A user op's command may use only the documented placeholders ({{ and }} are literal)."""
    try:
        parsed = [(f, s, c) for _, f, s, c in string.Formatter().parse(command) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}", key=where) from None
    for field, spec, conversion in parsed:
        if spec or conversion:  # `{name:>999999999}` or `{name!r}` would change the quoting
            shown = (
                f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
            )
            raise ConfigError(
                f"{where}: placeholder {shown[:40]} may not have a format or a conversion "
                f"(write {{{field}}}; the value is shell-quoted)",
                key=where,
            )
        if field not in PLACEHOLDERS:
            raise ConfigError(
                f"{where}: unknown placeholder {{{field}}} (allowed: "
                + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                + ")",
                key=where,
            )


def q(value: str) -> str:
    return shlex.quote(value)


def j(argv: Sequence[str]) -> str:
    return shlex.join(argv)


# ---------------------------------------------------------------------------------------------
# Host ops


def git_argv(host: Host, *args: str) -> list[str]:
    return ["git", "-C", host.repo, *args]


def pull_steps(host: Host) -> list[list[str]]:
    """The argv of each step of `pull`, in order."""
    return [
        git_argv(host, "status", "--porcelain", "--branch", "--untracked-files=no"),
        git_argv(host, "fetch", host.remote, host.branch),
        git_argv(host, "merge", "--ff-only", "FETCH_HEAD"),
    ]


def pull_script(host: Host) -> str:
    """Refuse a dirty checkout or one on another branch, then fetch and merge --ff-only.

    One `git status --porcelain --branch` tells both: its first line is `## BRANCH`,
    `## BRANCH...UPSTREAM [ahead N]`, `## HEAD (no branch)` or `## No commits yet on BRANCH`
    (a branch name cannot contain `..`), the others are the changed files. It is split with
    the shell's own parameter expansion, in no process of its own."""
    status, fetch, merge = (j(a) for a in pull_steps(host))
    script = f"""\
repo={q(host.repo)}; remote={q(host.remote)}; branch={q(host.branch)}; nl='
'
st=$({status}) || {{ echo "fleet: $repo is not a git checkout"; exit 1; }}
head=${{st%%"$nl"*}}; dirty=
case $st in *"$nl"*) dirty=${{st#*"$nl"}};; esac
if [ -n "$dirty" ]; then
  echo "fleet: refusing to pull: $repo has uncommitted changes:"; echo "$dirty"; exit 1
fi
case $head in
  "## HEAD (no branch)") current= ;;
  "## No commits yet on "* | "## Initial commit on "*) current=${{head##* on }} ;;
  *) current=${{head#"## "}}; current=${{current%%...*}} ;;
esac
if [ "$current" != "$branch" ]; then
  echo "fleet: refusing to pull: $repo is on ${{current:-a detached HEAD}}, not $branch"; exit 1
fi
{fetch} || {{ echo "fleet: git fetch $remote $branch failed"; exit 1; }}
{merge} || {{ echo "fleet: $branch has diverged from $remote/$branch; refusing to merge"; exit 1; }}
"""
    return Privilege.of(host).script(script)


def rebuild_argv(host: Host, op_id: str) -> list[str]:
    """The nixos-rebuild argv of a switch-like op (privilege added by the runner)."""
    flake = f"{host.repo}#{host.attr}"
    if op_id == "switch":
        return ["nixos-rebuild", "switch", "--flake", flake]
    if op_id == "force-rebuild":
        return [
            "nixos-rebuild",
            "switch",
            "--flake",
            flake,
            "--refresh",
            "--option",
            "narinfo-cache-negative-ttl",
            "0",
        ]
    if op_id == "rollback":
        return ["nixos-rebuild", "switch", "--rollback"]
    raise ValueError(f"{op_id} is not a switch-like op")


def test_script(host: Host, timeout: float) -> str:
    tests_dir = q(f"{host.repo}/hosts/{host.attr}/tests")
    wait = j(["timeout", f"{max(1, int(timeout) - 5)}", "systemctl", "is-system-running", "--wait"])
    failed = j(["systemctl", "--failed", "--no-pager"])
    return f"""\
d={tests_dir}
if [ -d "$d" ]; then
  rc=0; n=0
  for t in "$d"/*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    n=$((n+1)); name=${{t##*/}}
    echo "fleet: test $name: running"
    "$t"; r=$?
    if [ "$r" -eq 0 ]; then echo "fleet: test $name: PASS"
    else echo "fleet: test $name: FAIL (exit $r)"; rc=1; fi
  done
  echo "fleet: $n test(s) in $d"; exit $rc
fi
state=$({wait}); echo "systemctl is-system-running: ${{state:-no answer}}"
[ "$state" = running ] && exit 0
{failed}
echo "fleet: system is ${{state:-not running}}"; exit 1
"""


def restart_script(host: Host, *, deferred_units: Sequence[str] = ()) -> str:
    """Restart each loaded unit; absent units are noted; `deferred_units` are left for later."""
    priv = Privilege.of(host)
    lines = ["rc=0"]
    for unit in host.restart_units:
        lines.append(f"unit={q(unit)}")
        if unit in deferred_units:
            lines.append('echo "fleet: $unit runs this controller: restart deferred"')
            continue
        show = j(["systemctl", "show", "-p", "LoadState", "--value", "--", unit])
        restart = j(priv.argv(["systemctl", "restart", "--", unit]))
        lines.append(
            f'state=$({show}); if [ "$state" != loaded ]; then '
            'echo "fleet: $unit is not loaded on this host (${state:-unknown}): skipped"; '
            f'else echo "fleet: restarting $unit"; {restart} || rc=1; fi'
        )
    lines.append("exit $rc")
    return "\n".join(lines) + "\n"


def user_op_script(op: Op, host: Host) -> str:
    """A user op's command with its placeholders substituted, each shell-quoted."""
    assert op.command is not None
    values: Mapping[str, str] = {
        "name": host.name,
        "address": host.address,
        "repo": host.repo,
        "branch": host.branch,
        "flake_attr": host.attr,
    }
    return op.command.format_map({k: q(v) for k, v in values.items()})


# ---------------------------------------------------------------------------------------------
# Controller ops


def controller_git(settings: ControllerSettings, repo: str, *args: str) -> list[str]:
    return [
        "git",
        "-C",
        repo,
        "-c",
        f"user.name={settings.git_name}",
        "-c",
        f"user.email={settings.git_email}",
        *args,
    ]


def merge_pr_steps(settings: ControllerSettings, repo: str, pr: int) -> list[list[str]]:
    ref = settings.pr_ref.format(pr=pr)
    g = functools.partial(controller_git, settings, repo)
    return [
        g("fetch", settings.remote, settings.branch),
        g("merge", "--ff-only", "FETCH_HEAD"),
        g("fetch", settings.remote, ref),
        g("merge", "--no-ff", "-m", f"Merge pull request #{pr} ({ref})", "FETCH_HEAD"),
        g("push", settings.remote, f"HEAD:refs/heads/{settings.branch}"),
    ]


def nix_argv(*args: str) -> list[str]:
    return ["nix", "--extra-experimental-features", "nix-command flakes", *args]


def flake_update_argv(
    settings: ControllerSettings, repo: str, nix_version: tuple[int, int]
) -> list[str]:
    if nix_version >= (2, 19):
        return nix_argv("flake", "update", settings.flake_input, "--flake", repo)
    return nix_argv("flake", "lock", repo, "--update-input", settings.flake_input)


def bump_flake_steps(
    settings: ControllerSettings, repo: str, nix_version: tuple[int, int]
) -> dict[str, list[list[str]]]:
    """Steps of bump-flake: `update` always runs; `commit` only when flake.lock changed."""
    g = functools.partial(controller_git, settings, repo)
    return {
        "update": [
            g("fetch", settings.remote, settings.branch),
            g("merge", "--ff-only", "FETCH_HEAD"),
            flake_update_argv(settings, repo, nix_version),
        ],
        "changed": [g("status", "--porcelain", "--", "flake.lock")],
        "commit": [
            g("add", "--", "flake.lock"),
            g("commit", "-m", f"flake.lock: update {settings.flake_input}", "--", "flake.lock"),
            g("push", settings.remote, f"HEAD:refs/heads/{settings.branch}"),
        ],
    }


def host_script(op: Op, host: Host) -> str:
    """The script a host op that is not detached runs (see DETACHED_OPS and rebuild_argv)."""
    if not op.builtin:
        return user_op_script(op, host)
    if op.id == "pull":
        return pull_script(host)
    if op.id == "test":
        return test_script(host, op.timeout)
    if op.id == "restart":
        return restart_script(host)
    raise ValueError(f"{op.id} is not a host op with a script")
