"""The configuration repositories of the simulated fleet (`fleet demo`), made with git.

`seed_repositories` writes the demo's config flake (flake.nix, and a configuration.nix in
hosts/<name>/ for each host) and makes

    upstream.git    the shared repository (bare, branch main) every host pulls from
    admin/          a checkout of it: the controller's repo, where commits start
    each checkout   a host's sparse clone of upstream: the top-level files and its hosts/<name>/

with two commits. The first is what every host has checked out and runs. The second, the
release, is pushed to upstream after the hosts were cloned, so they are one commit behind: it
changes every host's configuration and breaks the chosen hosts' (`BROKEN`, on which the stub
nixos-rebuild fails).

git runs with a fixed identity and without the user's or the system's git config.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import FleetError

ROLES = ("web", "db", "worker")  # host i's role is ROLES[i % 3]: its /etc/fleet-role, a tag


@dataclass(frozen=True)
class DemoRepos:
    """What `seed_repositories` made: the two repositories and the two commits."""

    upstream: Path
    admin: Path
    initial: str
    release: str


FLAKE_NIX = """\
# The fleet demo's flake. The simulated hosts build nothing: their nixos-rebuild (a stub)
# checks that this file exists and reads hosts/<name>/configuration.nix.
{
  description = "fleet demo: one NixOS configuration per host";
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
  outputs = { self, nixpkgs }: {
    nixosConfigurations = builtins.mapAttrs (name: _: nixpkgs.lib.nixosSystem {
      system = "x86_64-linux";
      modules = [ ./hosts/${name}/configuration.nix ];
    }) (builtins.readDir ./hosts);
  };
}
"""


def configuration_nix(name: str, role: str, *, release: bool, broken: bool) -> str:
    lines = [
        "{ pkgs, ... }:",
        "{",
        f'  networking.hostName = "{name}";',
        "  services.openssh.enable = true;",
        f'  environment.etc."fleet-role".text = "{role}";',
    ]
    if release:
        lines += [
            "  services.prometheus.exporters.node.enable = true;",
            "  environment.systemPackages = [ pkgs.htop ];",
        ]
    if broken:
        lines.append("  networking.firewall.allowedTCPPorts = [ BROKEN ];  # undefined variable")
    lines += ['  system.stateVersion = "24.05";', "}", ""]
    return "\n".join(lines)


def _write_configurations(
    repo: Path, names: list[str], *, release: bool, broken: tuple[str, ...]
) -> None:
    (repo / "flake.nix").write_text(FLAKE_NIX)
    for i, name in enumerate(names):
        path = repo / "hosts" / name / "configuration.nix"
        path.parent.mkdir(parents=True, exist_ok=True)
        role = ROLES[i % len(ROLES)]
        path.write_text(configuration_nix(name, role, release=release, broken=name in broken))


def seed_repositories(
    workdir: Path, checkouts: Mapping[str, Path], broken: tuple[str, ...]
) -> DemoRepos:
    """Make upstream.git and admin/ at the first commit, clone each host's checkout of it
    (`checkouts`: host name -> path), then push the release commit (the hosts are one behind)."""
    names = list(checkouts)
    upstream, admin = workdir / "upstream.git", workdir / "admin"
    _git("init", "-q", "--bare", "-b", "main", str(upstream))
    _git("init", "-q", "-b", "main", str(admin))
    _write_configurations(admin, names, release=False, broken=())
    _git("-C", str(admin), "add", "-A")
    _git("-C", str(admin), "commit", "-q", "-m", "Initial configuration of the demo fleet")
    _git("-C", str(admin), "remote", "add", "origin", str(upstream))
    _git("-C", str(admin), "push", "-q", "-u", "origin", "main")
    initial = _git("-C", str(admin), "rev-parse", "HEAD").strip()

    _clone_checkouts(upstream, checkouts)

    _write_configurations(admin, names, release=True, broken=broken)
    message = "Release 2: node exporter and htop everywhere"
    if broken:
        message += f"\n\nOpens a firewall port on {', '.join(broken)} (with a typo)."
    _git("-C", str(admin), "commit", "-q", "-a", "-m", message)
    _git("-C", str(admin), "push", "-q", "origin", "main")
    release = _git("-C", str(admin), "rev-parse", "HEAD").strip()
    return DemoRepos(upstream, admin, initial, release)


def _clone_checkouts(upstream: Path, checkouts: Mapping[str, Path]) -> None:
    """Clone upstream for every host, in parallel, each a sparse checkout of its own directory
    (the top-level files and hosts/<name>/): n full checkouts of n host directories would be
    n² files."""
    with tempfile.TemporaryDirectory(prefix="git-templates-", dir=upstream.parent) as tmp:
        commands = []
        for name, checkout in checkouts.items():
            template = Path(tmp) / name
            (template / "info").mkdir(parents=True)
            patterns = ["/*", "!/*/", "/hosts/", "!/hosts/*/", f"/hosts/{name}/"]
            (template / "info" / "sparse-checkout").write_text("\n".join(patterns) + "\n")
            commands.append(
                ["git", "clone", "-q", "--shared", "-b", "main", f"--template={template}",
                 "-c", "core.sparseCheckout=true", "-c", "core.sparseCheckoutCone=true",
                 str(upstream), str(checkout)]
            )  # fmt: skip
        _run_parallel(commands, jobs=max(2, os.cpu_count() or 1))


def _git_environment() -> dict[str, str]:
    return {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,  # no signing, hooks or templates of the user's
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "fleet demo",
        "GIT_AUTHOR_EMAIL": "demo@fleet.invalid",
        "GIT_COMMITTER_NAME": "fleet demo",
        "GIT_COMMITTER_EMAIL": "demo@fleet.invalid",
    }


def _git_failed(argv: list[str], stderr: str) -> FleetError:
    subcommand = next(a for a in argv[1:] if not a.startswith("-") and "/" not in a)
    detail = (stderr.strip().splitlines() or ["no output"])[-1]
    return FleetError(f"demo: git {subcommand} failed: {detail}")


def _git(*args: str) -> str:
    argv = ["git", *args]
    env = _git_environment()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise _git_failed(argv, result.stderr)
    return result.stdout


def _run_parallel(commands: list[list[str]], jobs: int) -> None:
    """Run git commands, `jobs` at a time; the first failure stops the rest."""
    env = _git_environment()
    pending = list(reversed(commands))
    running: list[tuple[list[str], subprocess.Popen[str]]] = []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                argv = pending.pop()
                proc = subprocess.Popen(
                    argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                )
                running.append((argv, proc))
            argv, proc = running.pop(0)
            _, stderr = proc.communicate()
            if proc.returncode != 0:
                raise _git_failed(argv, stderr)
    finally:
        for _, proc in running:
            proc.kill()
            proc.communicate()
