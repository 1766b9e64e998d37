"""git for the harness: its own git commands, and the repos of a simulated fleet.

`init_upstream` creates upstream.git (branch main: flake.nix and hosts/<name>/configuration.nix)
and the scratch clone work/; each host's checkout and the controller's are clones of it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.integration.harness.processes import run

# ---------------------------------------------------------------------------------------------
# The harness's git commands


def git_env() -> dict[str, str]:
    """An environment for the harness's own git commands: fixed identity, no user config."""
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": "fleet test",
        "GIT_AUTHOR_EMAIL": "test@fleet.invalid",
        "GIT_COMMITTER_NAME": "fleet test",
        "GIT_COMMITTER_EMAIL": "test@fleet.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git (safe.directory=*, no signing) and return its stripped stdout."""
    argv = ["git", "-c", "safe.directory=*", "-c", "commit.gpgsign=false", *args]
    return run(argv, cwd=cwd, env=git_env()).strip()


def _git_popen(*args: str) -> subprocess.Popen[bytes]:
    argv = ["git", "-c", "safe.directory=*", *args]
    return subprocess.Popen(argv, env=git_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# ---------------------------------------------------------------------------------------------
# The fleet's repos


def host_configuration(name: str, *, broken: bool = False) -> str:
    """A host's configuration.nix; the stub fails to evaluate it when `broken`."""
    guard = "assert false; # BROKEN (fleet test harness)\n" if broken else ""
    return (
        f"# {name}: configuration of a simulated host (nixos-rebuild is a stub)\n"
        f"{{ ... }}:\n{guard}{{\n  networking.hostName = {json.dumps(name)};\n}}\n"
    )


FLAKE_NIX = """\
{
  description = "fleet integration tests: a placeholder, never evaluated (nixos-rebuild is a stub)";
  outputs = { self }: { };
}
"""


def clone_popen(upstream: Path, target: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start cloning `upstream` into `target`; the process and what it is, for `wait_all`."""
    return _git_popen("clone", "-q", str(upstream), str(target)), f"git clone {target}"


def init_upstream(root: Path, names: Sequence[str]) -> str:
    """upstream.git with the initial tree on main, and the scratch clone; return the commit."""
    upstream, work = root / "upstream.git", root / "work"
    git("init", "-q", "--bare", "-b", "main", str(upstream))
    git("init", "-q", "-b", "main", str(work))
    git("remote", "add", "origin", str(upstream), cwd=work)
    (work / "flake.nix").write_text(FLAKE_NIX)
    for name in names:
        config = work / "hosts" / name / "configuration.nix"
        config.parent.mkdir(parents=True)
        config.write_text(host_configuration(name))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "initial configuration", cwd=work)
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)
