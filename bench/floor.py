"""The floor: the least a controller can do to run the workload, with asyncssh and nothing else.

    python bench/floor.py HOSTS.json --strategy shell|sessions --mode lockstep|streaming

One connection per host; the same three commands every peer runs (a git fetch and merge
--ff-only, the stub nixos-rebuild switch, the stub systemctl is-system-running --wait);
asyncio.gather over the hosts. No state, no logs, no process groups, no detaching, no probes.

    sessions  each command is a new SSH session (channel) of the host's connection
    shell     one `sh` per host for the whole run, fed each command in turn followed by an
              exit marker (`printf '\\036%d\\n' $?`), its output read up to that marker

lockstep waits for every host to finish an op before any starts the next; streaming lets each
host run its three commands back to back. Prints one JSON line: the hosts that failed.

`--commands fleet` (with --config, shell strategy only) sends, instead of the bare commands,
exactly what fleet's session sends to a host: the ready line that takes the host lock, and each
op's own script (fleet.ops.builtin, fleet.ops.detach) in fleet's process-group wrapper
(fleet.transport.protocol). The host-side work is then fleet's, and what is left between this
and fleet is the controller's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.transport._asyncssh import asyncssh

if TYPE_CHECKING:  # fleet is imported only for --commands fleet: the bare floor stays bare
    from fleet.models import Host as FleetHost

MARK = b"\x1e"


def commands(host: dict[str, Any]) -> list[str]:
    repo = shlex.quote(host["repo"])
    flake = shlex.quote(f"{host['repo']}#{host['attr']}")
    return [
        f"git -C {repo} fetch -q origin main && git -C {repo} merge -q --ff-only FETCH_HEAD",
        f"nixos-rebuild switch --flake {flake}",
        "systemctl is-system-running --wait",
    ]


def fleet_commands(host: FleetHost, run_id: str) -> list[str]:
    """fleet's own scripts for pull, switch and test (as its runners render them)."""
    from fleet.ops import builtin as ops
    from fleet.ops import detach

    directory = detach.run_directory(host, run_id, "switch", 1)
    switch = detach.run_script(
        host,
        directory,
        ops.rebuild_argv(host, "switch"),
        unit=detach.unit_name(run_id, "switch", 1),
        delimiter=detach.new_delimiter(),
    )
    return [ops.pull_script(host), switch, ops.test_script(host, 600)]


class Host:
    def __init__(
        self,
        spec: dict[str, Any],
        keys: list[str],
        known_hosts: str,
        fleet_host: FleetHost | None = None,
    ) -> None:
        self.spec = spec
        self.keys = keys
        self.known_hosts = known_hosts
        self.conn: asyncssh.SSHClientConnection | None = None
        self.shell: asyncssh.SSHClientProcess[bytes] | None = None
        self.buffer = b""
        self.fleet_host = fleet_host
        self.token = secrets.token_hex(16)
        self.commands = (
            fleet_commands(fleet_host, f"floor-{self.token[:8]}") if fleet_host else commands(spec)
        )

    async def connect(self, strategy: str) -> None:
        self.conn = await asyncssh.connect(
            self.spec["address"],
            self.spec["port"],
            username=self.spec["user"],
            client_keys=self.keys,
            known_hosts=self.known_hosts,
            config=[],
        )
        if strategy == "shell" and self.fleet_host is None:
            self.shell = await self.conn.create_process("sh", encoding=None, stderr=asyncssh.STDOUT)
        elif strategy == "shell":
            from fleet.transport import protocol

            assert self.fleet_host is not None
            self.shell = await self.conn.create_process(
                "exec sh", encoding=None, stderr=asyncssh.STDOUT
            )
            path = f"{self.fleet_host.run_dir.rstrip('/')}/fleet.lock"
            lock = protocol.HostLock(path, "the floor script", self.token[:16])
            self.shell.stdin.write(protocol.ready_command(self.token, lock).encode())
            await self.marker()

    async def run(self, command: str, strategy: str) -> int:
        if self.conn is None:
            await self.connect(strategy)
        assert self.conn is not None
        if strategy == "sessions":
            result = await self.conn.run(command, encoding=None, check=False)
            return result.exit_status if result.exit_status is not None else -1
        assert self.shell is not None
        if self.fleet_host is not None:
            from fleet.transport import protocol

            self.shell.stdin.write(protocol.wrap_command(command, self.token).encode())
            return await self.marker()
        self.shell.stdin.write(f"{command} 2>&1; printf '\\036%d\\n' $?\n".encode())
        while (i := self.buffer.find(MARK)) < 0 or b"\n" not in self.buffer[i:]:
            chunk = await self.shell.stdout.read(65536)
            if not chunk:
                return -1
            self.buffer += chunk
        end = self.buffer.index(b"\n", i)
        code = int(self.buffer[i + 1 : end])
        self.buffer = self.buffer[end + 1 :]
        return code

    async def marker(self) -> int:
        """Read up to fleet's End marker; its status."""
        end = f"\x1e{self.token}:E:".encode()
        assert self.shell is not None
        while (i := self.buffer.find(end)) < 0 or b"\n" not in self.buffer[i:]:
            chunk = await self.shell.stdout.read(65536)
            if not chunk:
                return -1
            self.buffer += chunk
        stop = self.buffer.index(b"\n", i)
        code = int(self.buffer[i + len(end) : stop])
        self.buffer = self.buffer[stop + 1 :]
        return code

    async def close(self) -> None:
        if self.shell is not None:
            if self.fleet_host is not None:
                self.shell.stdin.write(b"exit\n")
            self.shell.stdin.write_eof()
        if self.conn is not None:
            self.conn.close()
            await self.conn.wait_closed()


async def main_async(args: argparse.Namespace) -> int:
    data = json.loads(Path(args.hosts).read_text())  # noqa: ASYNC240 (before anything runs)
    inventory = None
    if args.commands == "fleet":
        from fleet.config.inventory import load_inventory

        inventory = load_inventory(Path(args.config))
    hosts = [
        Host(
            h,
            [data["identity_file"]],
            data["known_hosts"],
            inventory.hosts[h["name"]] if inventory else None,
        )
        for h in data["hosts"]
    ]
    failed: dict[str, str] = {}

    async def step(host: Host, command: str) -> bool:
        name = host.spec["name"]
        if name in failed:
            return False
        try:
            code = await host.run(command, args.strategy)
        except (OSError, asyncssh.Error) as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            return False
        if code != 0:
            failed[name] = f"{command.split(maxsplit=1)[0][:40]} exited {code}"
        return code == 0

    async def all_ops(host: Host) -> None:
        for command in host.commands:
            if not await step(host, command):
                return

    if args.mode == "streaming":
        await asyncio.gather(*(all_ops(h) for h in hosts))
    else:
        for k in range(3):
            await asyncio.gather(*(step(h, h.commands[k]) for h in hosts))
    await asyncio.gather(*(h.close() for h in hosts), return_exceptions=True)
    print(json.dumps({"hosts": len(hosts), "failed": failed}))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hosts", help="the hosts JSON written by the benchmark")
    parser.add_argument("--strategy", choices=("shell", "sessions"), default="shell")
    parser.add_argument("--mode", choices=("lockstep", "streaming"), default="lockstep")
    parser.add_argument("--commands", choices=("bare", "fleet"), default="bare")
    parser.add_argument("--config", help="fleet.toml (for --commands fleet)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
