"""`pull` run by a real `sh` against real git checkouts: what it refuses, and what it merges.

The script's checks come from one `git status --porcelain --branch`; each state of the
checkout that the first line of that output can describe is here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleet.models import Host
from fleet.ops import builtin as ops

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "PATH": "/usr/bin:/bin",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", f"change {name}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "flake.nix", "{ }\n")
    return repo


def clone(upstream: Path, target: Path, *, track: bool = True) -> Path:
    subprocess.run(["git", "clone", "-q", str(upstream), str(target)], env=GIT_ENV, check=True)
    if not track:
        git(target, "branch", "--unset-upstream")
    return target


def pull(repo: Path, branch: str = "main") -> tuple[int, str]:
    host = Host(name="a", address="a", hostname="a", repo=str(repo), branch=branch)
    done = subprocess.run(
        ["sh", "-c", ops.pull_script(host)],
        env=GIT_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    return done.returncode, done.stdout


@pytest.mark.parametrize("track", [True, False], ids=["with upstream", "without upstream"])
def test_a_clean_checkout_on_its_branch_is_fast_forwarded(
    upstream: Path, tmp_path: Path, track: bool
) -> None:
    host = clone(upstream, tmp_path / "host", track=track)
    new = commit(upstream, "hosts.nix", "{ a = 1; }\n")
    code, out = pull(host)
    assert (code, git(host, "rev-parse", "HEAD")) == (0, new), out
    # with a commit of its own the branch is ahead of (and the header says so): still clean
    commit(upstream, "more.nix", "{ }\n")
    assert pull(host)[0] == 0


def test_a_dirty_checkout_is_refused_with_its_changes(upstream: Path, tmp_path: Path) -> None:
    host = clone(upstream, tmp_path / "host")
    (host / "flake.nix").write_text("{ edited = true; }\n")
    (host / "untracked.nix").write_text("ignored: untracked files do not count\n")
    before = git(host, "rev-parse", "HEAD")
    commit(upstream, "hosts.nix", "{ }\n")
    code, out = pull(host)
    assert code == 1
    assert out == (f"fleet: refusing to pull: {host} has uncommitted changes:\n M flake.nix\n")
    assert git(host, "rev-parse", "HEAD") == before


def test_another_branch_or_a_detached_head_is_refused(upstream: Path, tmp_path: Path) -> None:
    host = clone(upstream, tmp_path / "host")
    git(host, "checkout", "-q", "-b", "main.next")  # (dots: not cut as `...UPSTREAM` is)
    code, out = pull(host)
    assert (code, out) == (1, f"fleet: refusing to pull: {host} is on main.next, not main\n")
    git(host, "checkout", "-q", "--detach", "main")
    code, out = pull(host)
    assert (code, out) == (1, f"fleet: refusing to pull: {host} is on a detached HEAD, not main\n")


def test_not_a_checkout_and_an_unborn_branch(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = pull(empty)
    assert code == 1 and f"fleet: {empty} is not a git checkout" in out
    git(empty, "init", "-q", "-b", "main")
    git(empty, "remote", "add", "origin", str(tmp_path / "missing"))
    code, out = pull(empty)  # on main (no commits yet): the check passes, the fetch fails
    assert code == 1 and out.endswith("fleet: git fetch origin main failed\n"), out
    assert "refusing" not in out
    code, out = pull(empty, "prod")
    assert (code, out) == (1, f"fleet: refusing to pull: {empty} is on main, not prod\n")


def test_a_diverged_branch_is_refused(upstream: Path, tmp_path: Path) -> None:
    host = clone(upstream, tmp_path / "host")
    commit(host, "local.nix", "{ }\n")
    commit(upstream, "remote.nix", "{ }\n")
    code, out = pull(host)
    assert code == 1
    assert out.endswith("fleet: main has diverged from origin/main; refusing to merge\n"), out
