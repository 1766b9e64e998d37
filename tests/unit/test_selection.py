"""select_hosts: names, globs and @tags, in file order; a selector matching nothing is an error."""

from __future__ import annotations

import pytest

from fleet.config.inventory import parse_inventory
from fleet.config.selection import select_hosts
from fleet.errors import HostSelectionError

SELECT = """\
[hosts.web-1]
address = "a"
tags = ["eu", "web"]
[hosts.db-1]
address = "b"
tags = ["eu"]
[hosts.web-2]
address = "c"
tags = ["us", "web"]
[hosts.db-2]
address = "d"
"""


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, ["web-1", "db-1", "web-2", "db-2"]),
        ("db-2", ["db-2"]),
        ("db-2,web-1", ["web-1", "db-2"]),
        ("web-*", ["web-1", "web-2"]),
        ("*-2", ["web-2", "db-2"]),
        ("web-?", ["web-1", "web-2"]),
        ("@eu", ["web-1", "db-1"]),
        ("@us, db-*", ["db-1", "web-2", "db-2"]),
        ("web-1,@web,web-*", ["web-1", "web-2"]),
        (" web-1 ", ["web-1"]),
    ],
)
def test_select_hosts(selector: str | None, expected: list[str]) -> None:
    inv = parse_inventory(SELECT)
    assert [h.name for h in select_hosts(inv, selector)] == expected


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("gamma", "no host matches 'gamma' (hosts: web-1, db-1, web-2, db-2)"),
        ("web-1,gamma", "no host matches 'gamma' (hosts: web-1, db-1, web-2, db-2)"),
        ("Web-1", "no host matches 'Web-1' (hosts: web-1, db-1, web-2, db-2)"),
        ("x*", "no host matches 'x*' (hosts: web-1, db-1, web-2, db-2)"),
        ("@asia", "no host matches '@asia' (tags: @eu, @us, @web)"),
        ("@", "no host matches '@' (tags: @eu, @us, @web)"),
        ("", "empty host selector (give names, globs or @tags)"),
        (" , ", "empty host selector (give names, globs or @tags)"),
        ("web-1,,db-1", "empty item in host selector 'web-1,,db-1'"),
        ("web-1,", "empty item in host selector 'web-1,'"),
        ("$(touch /tmp/x)", "no host matches '$(touch /tmp/x)' (hosts: web-1, db-1, web-2, db-2)"),
        ("a\nb", "no host matches 'a\\nb' (hosts: web-1, db-1, web-2, db-2)"),
    ],
)
def test_bad_selectors(selector: str, message: str) -> None:
    inv = parse_inventory(SELECT)
    with pytest.raises(HostSelectionError) as info:
        select_hosts(inv, selector)
    assert str(info.value) == message


def test_selector_error_lists_at_most_twenty_hosts() -> None:
    inv = parse_inventory("".join(f'[hosts.h{i:02}]\naddress = "a"\n' for i in range(25)))
    with pytest.raises(HostSelectionError, match=r"h19, \.\.\. \(5 more\)\)$"):
        select_hosts(inv, "nope")


def test_select_in_an_empty_inventory() -> None:
    assert select_hosts(parse_inventory(""), None) == []
    with pytest.raises(HostSelectionError, match=r"\(hosts: none\)"):
        select_hosts(parse_inventory(""), "a")
