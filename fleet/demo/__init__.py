"""`fleet demo`: a simulated fleet of NixOS-like hosts on loopback, no sshd needed.

The modules::

    simulation.py  start_demo, DemoFleet, DemoHost: the work directory and the hosts
    repos.py       seed_repositories: the demo's config repositories (git)
    server.py      the SSH server (asyncssh) serving every simulated host, in its own process
    stubs/         nixos-rebuild and systemctl stand-ins, first on the hosts' PATH

The names below are loaded on first use: the server runs as `python -m fleet.demo.server`,
which must not find itself imported (by simulation.py) before it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.demo.simulation import DemoFleet, DemoHost, start_demo

__all__ = ["DemoFleet", "DemoHost", "start_demo"]


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module("fleet.demo.simulation"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
