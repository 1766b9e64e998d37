"""fleet: multi-step deployment pipelines across a fleet of NixOS hosts over SSH.

The library's face, as httpx's is: `Fleet` (fleet.api), the one API the CLI and the dashboard
call; the models every layer speaks (fleet.models); the error tree (fleet.errors). `Fleet` is
loaded on first use, so that importing the models does not import the engine, the state store
and the transport with it.

The rooms (docs/architecture.md)::

    config/     fleet.toml -> Inventory
    ops/        what runs, as commands (never running anything)
    run/        the engine: PipelineExecutor, the run record, the op runners
    transport/  Session and its SSH and local implementations
    state/      StateStore: runs, hosts, ops and logs
    cli/  web/  thin: parse, call fleet.api, render
    demo/       the simulated fleet of `fleet demo`
"""

from __future__ import annotations

import importlib
from importlib.metadata import version as _installed_version
from typing import TYPE_CHECKING

from fleet.errors import (
    ConfigError,
    Conflict,
    ConnectError,
    ConnectionLost,
    FleetError,
    HostError,
    HostKeyError,
    HostLockedError,
    HostSelectionError,
    StateError,
)
from fleet.models import (
    ControllerSettings,
    Detach,
    Host,
    HostKeyPolicy,
    HostResult,
    HostStatus,
    MaxFail,
    Mode,
    Op,
    OpResult,
    OpStatus,
    Pipeline,
    Privilege,
    Run,
    RunOptions,
    RunStatus,
    Scope,
    SshSettings,
)

if TYPE_CHECKING:
    from fleet.api import Fleet, PlannedRun

__version__ = _installed_version("fleet")  # pyproject.toml is the one place it is written

__all__ = [
    "ConfigError",
    "Conflict",
    "ConnectError",
    "ConnectionLost",
    "ControllerSettings",
    "Detach",
    "Fleet",
    "FleetError",
    "Host",
    "HostError",
    "HostKeyError",
    "HostKeyPolicy",
    "HostLockedError",
    "HostResult",
    "HostSelectionError",
    "HostStatus",
    "MaxFail",
    "Mode",
    "Op",
    "OpResult",
    "OpStatus",
    "Pipeline",
    "PlannedRun",
    "Privilege",
    "Run",
    "RunOptions",
    "RunStatus",
    "Scope",
    "SshSettings",
    "StateError",
    "__version__",
]

_LAZY = {"Fleet": "fleet.api", "PlannedRun": "fleet.api"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
