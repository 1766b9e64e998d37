"""Controller ops: merge-pr and bump-flake run once, locally, in the controller's checkout.

Each step is an argv list run in its own process group (`start_new_session`), its output
streamed to the op's log; on cancellation or timeout the group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from fleet.models import ControllerSettings, Op
from fleet.ops import builtin as ops
from fleet.run.runners import OpOutcome, TailBuffer, error_from_output

Output = Callable[[bytes], None]


async def run_local(
    argv: Sequence[str], output: Output, *, cwd: str | None = None, shell: bool = False
) -> int:
    """Run one command in its own process group; kill the group if cancelled."""
    if shell:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            argv[0],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    else:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    assert proc.stdout is not None
    try:
        while chunk := await proc.stdout.read(65536):
            output(chunk)
        return await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(3):
                await proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise


async def nix_version(output: Output) -> tuple[int, int]:
    chunks: list[bytes] = []
    code = await run_local(["nix", "--version"], chunks.append)
    text = b"".join(chunks).decode(errors="replace")
    match = re.search(r"(\d+)\.(\d+)", text)
    if code != 0 or not match:
        output(b"fleet: could not tell the Nix version from `nix --version`: " + text.encode())
        return (2, 19)
    return int(match[1]), int(match[2])


class ControllerOpRunner:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.repo = str(Path(settings.repo).expanduser())

    async def run(self, op: Op, output: Output, *, pr: int | None) -> OpOutcome:
        tail = TailBuffer()

        def sink(data: bytes) -> None:
            tail.add(data)
            output(data)

        if not op.builtin:
            assert op.command is not None
            code = await run_local([op.command], sink, cwd=self.repo, shell=True)
            return self._outcome(code, tail)
        if not await asyncio.to_thread(Path(self.repo, ".git").exists):
            msg = f"fleet: controller repo {self.repo} is not a git checkout ([controller] repo)"
            sink(msg.encode() + b"\n")
            return self._outcome(1, tail)
        if op.id == "merge-pr":
            if pr is None:
                sink(b"fleet: merge-pr needs --pr N\n")
                return self._outcome(2, tail)
            steps = ops.merge_pr_steps(self.settings, self.repo, pr)
            code = await self._steps(steps, sink)
            if code != 0:  # never leave a half-done merge behind in the checkout
                abort = ops.controller_git(self.settings, self.repo, "merge", "--abort")
                await run_local(abort, lambda _data: None)
            return self._outcome(code, tail)
        if op.id == "bump-flake":
            return await self._bump(sink, tail)
        raise ValueError(f"{op.id} is not a controller op")

    async def _bump(self, sink: Output, tail: TailBuffer) -> OpOutcome:
        version = await nix_version(sink)
        steps = ops.bump_flake_steps(self.settings, self.repo, version)
        code = await self._steps(steps["update"], sink)
        if code != 0:
            return self._outcome(code, tail)
        changed: list[bytes] = []
        code = await run_local(steps["changed"][0], changed.append)
        if code != 0:
            return self._outcome(code, tail)
        if not b"".join(changed).strip():
            sink(f"fleet: {self.settings.flake_input} is already current\n".encode())
            return OpOutcome(0)
        return self._outcome(await self._steps(steps["commit"], sink), tail)

    async def _steps(self, steps: Sequence[Sequence[str]], sink: Output) -> int:
        for argv in steps:
            sink(("$ " + ops.j(argv) + "\n").encode())
            code = await run_local(argv, sink)
            if code != 0:
                sink(f"fleet: step failed: {ops.j(argv)}\n".encode())
                return code
        return 0

    @staticmethod
    def _outcome(code: int, tail: TailBuffer) -> OpOutcome:
        return OpOutcome(code, error=None if code == 0 else error_from_output(tail.data, code))
