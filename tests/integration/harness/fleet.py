"""A simulated fleet: `TestFleet`, `start_fleet` and `FleetFactory`.

A `TestFleet` holds the hosts, the repos and the files fleet needs to reach them (known_hosts,
fleet.toml); it pushes changes upstream, runs the fleet CLI and kills everything on `close()`.
Its files under <root> are listed in the package doc (tests/integration/harness/__init__.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tests.integration.harness.git import clone_popen, git, host_configuration, init_upstream
from tests.integration.harness.processes import HarnessError, kill_and_wait, wait_all
from tests.integration.harness.sshd import (
    SYSTEM_PATH,
    ClientKey,
    SshdHost,
    free_port,
    keygen_popen,
    openssh_version,
    wait_ready_or_move,
)
from tests.integration.harness.stubs import DEFAULT_UNITS, STUBS_DIR, SUDO_SHIM
from tests.integration.harness.toml import TomlValue, toml_key, toml_table

FLEET_COMMAND: tuple[str, ...] = (sys.executable, "-m", "fleet")


class TestFleet:
    """n simulated hosts, their upstream repo, and the files fleet needs to reach them."""

    __test__ = False  # not a pytest test class

    def __init__(self, root: Path, hosts: Sequence[SshdHost], client_key: ClientKey) -> None:
        self.root = root
        self.hosts: dict[str, SshdHost] = {h.name: h for h in hosts}
        self.client_key = client_key
        self.upstream = root / "upstream.git"
        self.work = root / "work"
        self.controller_repo = root / "controller"
        self.known_hosts = root / "known_hosts"
        self.config = root / "fleet.toml"
        self.state_dir = root / "state"
        self.cli_home = root / "cli-home"
        self._cli: list[subprocess.Popen[str]] = []

    def __enter__(self) -> TestFleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> SshdHost:
        return self.hosts[name]

    @property
    def names(self) -> list[str]:
        return list(self.hosts)

    def calls(self, name: str, program: str | None = None) -> list[list[str]]:
        """The stub calls made on host `name`, each as [program, *args]."""
        return self.hosts[name].stub.calls(program)

    # --- git

    def head_of(self, name: str) -> str:
        return git("rev-parse", "HEAD", cwd=self.hosts[name].repo)

    def upstream_head(self, branch: str = "main") -> str:
        return git("rev-parse", f"refs/heads/{branch}", cwd=self.upstream)

    def _commit(self, files: Mapping[str, str | None], message: str, *, mode: int = 0o644) -> str:
        """Commit `files` (path -> content, None deletes) on upstream's main in the scratch
        clone; return the commit (not pushed)."""
        git("fetch", "-q", "origin", "main", cwd=self.work)
        git("reset", "-q", "--hard", "FETCH_HEAD", cwd=self.work)
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                git("rm", "-q", "--", rel, cwd=self.work)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(mode)
            git("add", "--", rel, cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push_change(self, files: Mapping[str, str | None], message: str = "change") -> str:
        """Commit `files` on top of upstream's main and push; return the new commit."""
        commit = self._commit(files, message)
        git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=self.work)
        return commit

    def push_pr(self, pr: int, files: Mapping[str, str | None], message: str = "pr") -> str:
        """Push a commit on top of main to refs/pull/<pr>/head (main does not move)."""
        commit = self._commit(files, message)
        git("push", "-q", "origin", f"HEAD:refs/pull/{pr}/head", cwd=self.work)
        return commit

    def break_host(self, name: str) -> str:
        """Push a configuration.nix for `name` that fails to evaluate (contains BROKEN)."""
        path = f"hosts/{name}/configuration.nix"
        return self.push_change({path: host_configuration(name, broken=True)}, f"break {name}")

    def fix_host(self, name: str) -> str:
        path = f"hosts/{name}/configuration.nix"
        return self.push_change({path: host_configuration(name)}, f"fix {name}")

    def make_dirty(self, name: str) -> None:
        """Edit a tracked file in the host's checkout without committing it."""
        path = self.hosts[name].repo / "hosts" / name / "configuration.nix"
        with path.open("a") as config:
            config.write("# an uncommitted local edit\n")

    def add_host_test(
        self, name: str, script_name: str, content: str, *, push: bool = True
    ) -> str | None:
        """An executable test in hosts/<name>/tests/: pushed upstream (arriving with the
        next pull; returns the commit) or, with push=False, written into the host's checkout
        (untracked, so the checkout stays clean)."""
        rel = f"hosts/{name}/tests/{script_name}"
        if push:
            commit = self._commit({rel: content}, f"test {script_name} for {name}", mode=0o755)
            git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=self.work)
            return commit
        path = self.hosts[name].repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o755)
        return None

    def pull(self, name: str) -> str:
        """Bring the host's checkout to upstream's main directly (not through fleet)."""
        repo = self.hosts[name].repo
        git("fetch", "-q", "origin", "main", cwd=repo)
        git("merge", "-q", "--ff-only", "FETCH_HEAD", cwd=repo)
        return self.head_of(name)

    # --- files for fleet

    def write_known_hosts(
        self, path: Path | None = None, *, empty: bool = False, hosts: Iterable[str] | None = None
    ) -> Path:
        """A known_hosts file with the host keys of `hosts` (default all), or an empty one."""
        path = path or self.known_hosts
        names = [] if empty else list(self.hosts if hosts is None else hosts)
        path.write_text("".join(self.hosts[n].host_key_line() + "\n" for n in names))
        return path

    def host_table(self, name: str) -> dict[str, TomlValue | None]:
        host = self.hosts[name]
        return {
            "address": host.address,
            "port": host.port,
            "repo": str(host.repo),
            "system_profile": str(host.system_profile),
            "run_dir": str(host.run_dir),
            "detach": "setsid",
        }

    def write_config(
        self,
        path: Path | None = None,
        *,
        ssh: Mapping[str, TomlValue | None] | None = None,
        defaults: Mapping[str, TomlValue | None] | None = None,
        controller: Mapping[str, TomlValue | None] | None = None,
        hosts: Mapping[str, Mapping[str, TomlValue | None]] | None = None,
        host_names: Iterable[str] | None = None,
        extra: str = "",
    ) -> Path:
        """Write a fleet.toml for this fleet (default: <root>/fleet.toml) and return its path.

        Each mapping is merged over the generated table (a None value removes a key); `hosts`
        may name hosts that are not in the fleet (e.g. an unreachable address); `host_names`
        limits which of the fleet's hosts are written; `extra` is raw TOML appended (ops,
        pipelines, ...).
        """
        tables: dict[str, dict[str, TomlValue | None]] = {
            "ssh": {
                "identity_file": str(self.client_key.private),
                "known_hosts": [str(self.known_hosts)],
                "host_key_policy": "strict",
                "connect_timeout": 5,
                **(ssh or {}),
            },
            "defaults": {"user": "root", "branch": "main", **(defaults or {})},
            "controller": {"repo": str(self.controller_repo), **(controller or {})},
        }
        out = [toml_table(name, values) for name, values in tables.items()]
        overrides = dict(hosts or {})
        for name in self.hosts if host_names is None else host_names:
            values = {**self.host_table(name), **overrides.pop(name, {})}
            out.append(toml_table(f"hosts.{toml_key(name)}", values))
        out += [toml_table(f"hosts.{toml_key(n)}", v) for n, v in overrides.items()]
        if extra:
            out.append(extra if extra.endswith("\n") else extra + "\n")
        path = path or self.config
        path.write_text("\n".join(out))
        return path

    # --- talking to hosts and running fleet

    def ssh_argv(self, name: str, *, known_hosts: Path | None = None) -> list[str]:
        """The system ssh client's argv to reach `name` as root (add the remote command)."""
        host = self.hosts[name]
        return [
            "ssh", "-F", os.devnull, "-i", str(self.client_key.private),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5",
            "-o", "LogLevel=ERROR", "-p", str(host.port), f"root@{host.address}",
        ]  # fmt: skip

    def ssh(
        self, name: str, command: str, *, check: bool = False, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` (a shell string) on host `name` with the system ssh client."""
        proc = subprocess.run(
            [*self.ssh_argv(name), "--", command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise HarnessError(f"ssh {name} {command!r}: exit {proc.returncode}: {proc.stderr}")
        return proc

    def cli_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """fleet's environment: FLEET_STATE_DIR in the fleet, HOME isolated (no ~/.ssh)."""
        self.cli_home.mkdir(exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        return {
            **base,
            "HOME": str(self.cli_home),
            "FLEET_STATE_DIR": str(self.state_dir),
            "NO_COLOR": "1",
            "TERM": "dumb",
            "COLUMNS": "200",
            **(env or {}),
        }

    def cli_argv(self, args: Sequence[str], config: Path | None = None) -> list[str]:
        return [*FLEET_COMMAND, "--config", str(config or self.config), *args]

    def run_cli(
        self,
        args: Sequence[str],
        *,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run `fleet --config <config> ARGS...` to completion (output as text)."""
        return subprocess.run(
            self.cli_argv(args, config), env=self.cli_env(env), input=input,
            capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root,
        )  # fmt: skip

    def spawn_cli(
        self,
        args: Sequence[str],
        *,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """Start fleet in the background (stdout/stderr piped); `close()` kills it if left."""
        proc = subprocess.Popen(
            self.cli_argv(args, config), env=self.cli_env(env), cwd=self.root, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._cli.append(proc)
        return proc

    # --- teardown

    def leftover_processes(self) -> dict[str, list[int]]:
        """Live processes of each host (empty lists after `close()`)."""
        return {name: host.processes() for name, host in self.hosts.items()}

    def close(self) -> None:
        """Kill every process of the fleet; HarnessError if one survives."""
        for proc in self._cli:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        self._cli.clear()
        for host in self.hosts.values():
            host.kill()
        pids = {p for host in self.hosts.values() for p in host.processes()}
        alive = kill_and_wait(pids)
        if alive:
            raise HarnessError(f"processes survived the fleet's teardown: {alive}")


def start_fleet(
    root: Path,
    n: int = 3,
    *,
    client_key: ClientKey | None = None,
    names: Sequence[str] | None = None,
    single_address: bool | None = None,
    empty_known_hosts: bool = False,
    units: Sequence[str] = DEFAULT_UNITS,
    timeout: float = 10,
) -> TestFleet:
    """Start n hosts in parallel and write known_hosts and fleet.toml; see the module doc.

    Host i listens on 127.0.0.(2+i) (127.0.1.x from the 251st on); `names` (default host1,
    host2, ...) overrides `n`. `single_address` puts every host on 127.0.0.1 (distinct ports),
    for systems where only that loopback address exists; by default it is used off Linux.
    """
    names = list(names or [f"host{i + 1}" for i in range(n)])
    if single_address is None:
        single_address = not sys.platform.startswith("linux")
    root.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    key_procs = []
    if client_key is None:
        client_key = ClientKey(root / "client" / "id_ed25519", root / "client" / "id_ed25519.pub")
        client_key.private.parent.mkdir(exist_ok=True)
        key_procs.append((keygen_popen(client_key.private), "ssh-keygen (client key)"))
    shim_dir = root / "bin"
    shim_dir.mkdir(exist_ok=True)
    (shim_dir / "sudo").write_text(SUDO_SHIM)
    (shim_dir / "sudo").chmod(0o755)
    path = f"{STUBS_DIR}:{shim_dir}:{SYSTEM_PATH}"
    openssh = openssh_version()
    hosts: list[SshdHost] = []
    for i, name in enumerate(names):
        address = "127.0.0.1" if single_address else f"127.0.{i // 250}.{2 + i % 250}"
        port = free_port(address)
        while any((h.address, h.port) == (address, port) for h in hosts):
            port = free_port(address)
        host = SshdHost(
            name, address=address, port=port, root=root / "hosts" / name,
            authorized_keys=root / "authorized_keys", path=path, openssh=openssh,
        )  # fmt: skip
        key_procs.append((host.prepare(), f"ssh-keygen for {name}"))
        hosts.append(host)
    result = TestFleet(root, hosts, client_key)
    try:
        commit = init_upstream(root, names)
        clones = [clone_popen(result.upstream, h.repo) for h in hosts]
        clones.append(clone_popen(result.upstream, result.controller_repo))
        wait_all(key_procs)
        (root / "authorized_keys").write_text(client_key.public.read_text())
        for host in hosts:
            host.launch()
        wait_all(clones)
        for host in hosts:
            flake = f"{host.repo}#{host.name}"
            host.stub.initialize(commit, attr=host.name, flake=flake, units=units)
        for host in hosts:
            wait_ready_or_move(host, timeout)
        result.write_known_hosts(empty=empty_known_hosts)
        result.write_config()
    except BaseException:
        result.close()
        raise
    return result


class FleetFactory:
    """Creates fleets under one directory (the test's tmp_path) and closes them all."""

    def __init__(self, base: Path, client_key: ClientKey) -> None:
        self.base = base
        self.client_key = client_key
        self.fleets: list[TestFleet] = []

    def __call__(
        self,
        n: int = 3,
        *,
        names: Sequence[str] | None = None,
        single_address: bool | None = None,
        empty_known_hosts: bool = False,
        units: Sequence[str] = DEFAULT_UNITS,
    ) -> TestFleet:
        root = self.base if not self.fleets else self.base / f"fleet{len(self.fleets) + 1}"
        result = start_fleet(
            root, n, client_key=self.client_key, names=names, single_address=single_address,
            empty_known_hosts=empty_known_hosts, units=units,
        )  # fmt: skip
        self.fleets.append(result)
        return result

    def close(self) -> None:
        errors = []
        for test_fleet in self.fleets:
            try:
                test_fleet.close()
            except HarnessError as error:
                errors.append(str(error))
        self.fleets.clear()
        if errors:
            raise HarnessError("; ".join(errors))
