"""How a run is asked to go: `RunOptions` (mode, parallelism, max-fail, rollback, PR, selector).

The CLI and the dashboard build them from their flags and fields, the executor follows them,
and their JSON form is stored with the run (`Run.options`) so that a retry runs as the
original did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet.errors import ConfigError
from fleet.models import Mode


@dataclass(frozen=True)
class MaxFail:
    """`--max-fail N` or `--max-fail P%`: how many failed hosts are tolerated."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> MaxFail:
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if not 0 <= percent <= 100:
                    raise ValueError
                return cls(percent=percent)
            count = int(text)
            if count < 0:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise ConfigError(f"--max-fail: expected N or P% (got {text!r})") from None

    def exceeded(self, failed: int, total: int) -> bool:
        limit = self.count if self.count is not None else (self.percent or 0) * total / 100
        return failed > limit

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class RunOptions:
    mode: Mode = Mode.LOCKSTEP
    max_parallel: int | None = None
    max_fail: MaxFail | None = None
    rollback_on_failure: bool = False
    pr: int | None = None
    selector: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "max_parallel": self.max_parallel,
            "max_fail": str(self.max_fail) if self.max_fail else None,
            "rollback_on_failure": self.rollback_on_failure,
            "pr": self.pr,
            "on": self.selector,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunOptions:
        max_fail = data.get("max_fail")
        return cls(
            mode=Mode(data.get("mode", "lockstep")),
            max_parallel=data.get("max_parallel"),
            max_fail=MaxFail.parse(max_fail) if max_fail else None,
            rollback_on_failure=bool(data.get("rollback_on_failure")),
            pr=data.get("pr"),
            selector=data.get("on"),
        )
