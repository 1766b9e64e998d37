"""Choosing hosts: `select_hosts`, the selector language of `--on` and of the web API's "on".

A selector is a comma list of host names, globs (`web-*`, matched case-sensitively) and tags
(`@eu`). An item that matches nothing is an error naming what there is to match.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from fleet.config.inventory import Inventory
from fleet.config.validate import show
from fleet.errors import HostSelectionError
from fleet.models import Host

__all__ = ["select_hosts"]


def select_hosts(inventory: Inventory, selector: str | None) -> list[Host]:
    """Hosts matching a comma list of names, globs (`web-*`) and tags (`@eu`), in file order.

    None selects every host. An item that matches nothing (an unknown name, a glob or tag
    without hosts) is an error, so that a typo never silently deploys fewer hosts.
    """
    hosts = list(inventory.hosts.values())
    if selector is None:
        return hosts
    items = [item.strip() for item in selector.split(",")]
    if not any(items):
        raise HostSelectionError("empty host selector (give names, globs or @tags)")
    chosen: set[str] = set()
    for item in items:
        if not item:
            raise HostSelectionError(f"empty item in host selector {show(selector)}")
        if item.startswith("@"):
            matched = {h.name for h in hosts if item[1:] in h.tags}
            known = sorted({"@" + t for h in hosts for t in h.tags})
            what = "tags"
        else:
            matched = {h.name for h in hosts if fnmatch.fnmatchcase(h.name, item)}
            known, what = [h.name for h in hosts], "hosts"
        if not matched:
            raise HostSelectionError(f"no host matches {show(item)} ({what}: {_short_list(known)})")
        chosen |= matched
    return [h for h in hosts if h.name in chosen]


def _short_list(names: Sequence[str], limit: int = 20) -> str:
    if not names:
        return "none"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
