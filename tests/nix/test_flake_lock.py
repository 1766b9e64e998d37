"""flake.lock is a valid version-7 lock of exactly the inputs flake.nix declares, with nixpkgs
pinned to the nixos-25.11 revision chosen for fleet.

flake.nix's inputs are read with nix-instantiate (they are plain data); nothing is fetched.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import pytest

from tests.nix.conftest import ROOT, nix_eval_expression

NIXPKGS_LOCKED = {
    "lastModified": 1771574726,
    "narHash": "sha256-D1PA3xQv/s4W3lnR9yJFSld8UOLr0a/cBWMQMXS+1Qg=",
    "owner": "NixOS",
    "repo": "nixpkgs",
    "rev": "c217913993d6c6f6805c3b1a3bda5e639adfde6d",
    "type": "github",
}
NIXPKGS_ORIGINAL = {"owner": "NixOS", "ref": "nixos-25.11", "repo": "nixpkgs", "type": "github"}


def declared_inputs() -> dict[str, Any]:
    inputs = nix_eval_expression("(import ./flake.nix).inputs")
    assert isinstance(inputs, dict)
    return inputs


def outputs_arguments() -> set[str]:
    expression = "builtins.attrNames (builtins.functionArgs (import ./flake.nix).outputs)"
    return set(nix_eval_expression(expression))


def original_of(url: str) -> dict[str, str]:
    """The `original` that Nix records for a flake reference (the forms fleet uses)."""
    match = re.fullmatch(r"github:([^/?]+)/([^/?]+)(?:/([^?]+))?(?:\?(.*))?", url)
    if match is None:
        pytest.fail(f"flake reference {url!r}: this test knows only github: references")
    owner, repo, ref_or_rev, query = match.groups()
    original = {"type": "github", "owner": owner, "repo": repo}
    if ref_or_rev:
        key = "rev" if re.fullmatch(r"[0-9a-f]{40}", ref_or_rev) else "ref"
        original[key] = ref_or_rev
    original.update(parse_qsl(query or ""))
    return original


@pytest.fixture(scope="module")
def lock() -> dict[str, Any]:
    data = json.loads((ROOT / "flake.lock").read_text())
    assert isinstance(data, dict)
    return data


def test_is_a_version_7_lock(lock: dict[str, Any]) -> None:
    assert lock["version"] == 7
    assert lock["root"] in lock["nodes"]
    assert set(lock) == {"nodes", "root", "version"}


def test_is_written_as_nix_writes_it(lock: dict[str, Any]) -> None:
    # Sorted keys, two-space indent, a final newline: `nix flake lock` leaves it unchanged.
    text = (ROOT / "flake.lock").read_text()
    assert text == json.dumps(lock, indent=2, sort_keys=True) + "\n"


def test_locks_exactly_the_declared_inputs(lock: dict[str, Any]) -> None:
    inputs = declared_inputs()
    root = lock["nodes"][lock["root"]]
    assert set(root["inputs"]) == set(inputs)
    assert outputs_arguments() == {"self", *inputs}
    for name, declared in inputs.items():
        node = lock["nodes"][root["inputs"][name]]
        assert node["original"] == original_of(declared["url"]), name
        locked = node["locked"]
        for key in ("type", "owner", "repo"):
            assert locked[key] == node["original"][key], (name, key)
        assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked["narHash"]), name
        assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"]), name
        assert isinstance(locked["lastModified"], int), name


def test_has_no_nodes_that_nothing_uses(lock: dict[str, Any]) -> None:
    reachable = set()
    pending = [lock["root"]]
    while pending:
        name = pending.pop()
        if name not in reachable:
            reachable.add(name)
            pending.extend(
                i for i in lock["nodes"][name].get("inputs", {}).values() if isinstance(i, str)
            )
    assert reachable == set(lock["nodes"])


def test_pins_nixpkgs_to_the_chosen_nixos_25_11_revision(lock: dict[str, Any]) -> None:
    assert declared_inputs()["nixpkgs"] == {"url": "github:NixOS/nixpkgs/nixos-25.11"}
    node = lock["nodes"][lock["nodes"][lock["root"]]["inputs"]["nixpkgs"]]
    assert node["locked"] == NIXPKGS_LOCKED
    assert node["original"] == NIXPKGS_ORIGINAL


def test_reads_github_references() -> None:
    assert original_of("github:NixOS/nixpkgs/nixos-25.11") == NIXPKGS_ORIGINAL
    assert original_of("github:o/r") == {"type": "github", "owner": "o", "repo": "r"}
    rev = "c217913993d6c6f6805c3b1a3bda5e639adfde6d"
    assert original_of(f"github:o/r/{rev}")["rev"] == rev
    assert original_of("github:o/r?dir=lib") == {
        "type": "github",
        "owner": "o",
        "repo": "r",
        "dir": "lib",
    }
