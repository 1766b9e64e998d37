"""What every command shares: the lazily opened inventory and store, and exit codes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from fleet.api import Fleet, state_dir_from
from fleet.config.inventory import find_config, load_inventory
from fleet.state import StateStore

EXIT_USAGE = 2
EXIT_CANCELLED = 130

F = Callable[..., Any]


@dataclass
class AppContext:
    config: str | None
    state_dir: str | None
    verbose: int
    _fleet: Fleet | None = None
    _store: StateStore | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def fleet(self) -> Fleet:
        if self._fleet is None:
            inventory = load_inventory(find_config(self.config))
            self._fleet = Fleet(inventory, self.store())
        return self._fleet

    def store(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(state_dir_from(self.state_dir))
            self.closers.append(self._store.close)
        return self._store


pass_app = click.make_pass_decorator(AppContext)
