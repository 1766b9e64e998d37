"""Reading one TOML table of fleet.toml: `Table`, its typed readers, and `first_set`.

`Table` refuses unknown keys and values of the wrong type, and checks each string it reads with
the validator its caller names (one of fleet.config.validate's `check_*`); an error is one
line naming the file, the table and the key:

    fleet.toml: hosts.alpha.branch: invalid git branch name '-x' (must not start with '-')

`Table`'s readers return None for an absent key, and `first_set` takes the first value set:
that is how precedence (a host's table, then `[defaults]`, then a built-in value) is written.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import date, datetime, time
from enum import StrEnum
from typing import TypeVar

from fleet.config.validate import NAME_RULE, show
from fleet.errors import ConfigError
from fleet.models import CONTROLLER, is_valid_name

MAX_SECONDS = 7 * 24 * 3600.0

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")

BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Table:
    """One TOML table being read: knows its place, refuses unknown keys, reads typed values.

    Each reader returns None when the key is absent, so that callers know what was set
    explicitly (for precedence) and what is left to a default.
    """

    def __init__(
        self,
        file: str,
        path: tuple[str, ...],
        data: Mapping[str, object],
        allowed: Collection[str] | None,
    ) -> None:
        self.file, self.path, self.data = file, path, data
        for key in data:
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.error(key, f"unknown key ({hint}allowed: {', '.join(allowed)})")

    def names(self) -> list[str]:
        """The keys of a table of named tables ([hosts], [ops], [pipelines]), in file order."""
        return list(self.data)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def where(self, key: str | None = None, index: int | None = None) -> str:
        parts = (*self.path, key) if key is not None else self.path
        path = ".".join(p if BARE_KEY_RE.fullmatch(p) else _quote_key(p) for p in parts)
        return path if index is None else f"{path}[{index}]"

    def error(self, key: str | None, reason: str, index: int | None = None) -> ConfigError:
        where = self.where(key, index)
        message = f"{where}: {reason}" if where else reason
        return ConfigError(message, file=self.file, key=where or None)

    @contextlib.contextmanager
    def registry_errors(self) -> Iterator[None]:
        """Name the file in the errors the op and pipeline registries raise."""
        try:
            yield
        except ConfigError as exc:
            if exc.file is not None:
                raise
            raise ConfigError(str(exc), file=self.file, key=exc.key) from None

    def check_name(self, name: str, what: str, existing: Collection[str]) -> None:
        """A host, op or pipeline id: a valid name, not differing from another only in case."""
        if not is_valid_name(name):
            raise self.error(name, f"invalid {what} name ({NAME_RULE})")
        if what == "host" and name == CONTROLLER:
            raise self.error(name, f"{CONTROLLER!r} is reserved for the controller's own ops")
        for other in existing:
            if other != name and other.lower() == name.lower():
                raise self.error(name, f"{what} name differs from {other!r} only in case")

    def table(self, key: str, allowed: Collection[str] | None) -> Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, _expected("a table", value))
        return Table(self.file, (*self.path, key), value, allowed)

    def string(self, key: str, check: Callable[[str], None]) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, _expected("a string", value))
        self._check(key, value, check)
        return value

    def strings(
        self, key: str, check: Callable[[str], None], *, single_ok: bool = False
    ) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if single_ok and isinstance(value, str):
            self._check(key, value, check)
            return (value,)
        if not isinstance(value, list):
            what = "a string or an array of strings" if single_ok else "an array of strings"
            raise self.error(key, _expected(what, value))
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(key, _expected("a string", item), index=i)
            self._check(key, item, check, index=i)
        return tuple(value)

    def seconds(self, key: str, *, zero_ok: bool = False) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, _expected("a number of seconds", value))
        low = ">= 0" if zero_ok else "> 0"
        if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
            raise self.error(key, f"must be a number of seconds {low}, got {value}")
        if value > MAX_SECONDS:
            raise self.error(key, f"must be at most {MAX_SECONDS:.0f} seconds (7 days)")
        return float(value)

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, _expected("an integer", value))
        if not low <= value <= high:
            shown = value if abs(value) < 10**12 else "a huge number"
            raise self.error(key, f"must be between {low} and {high}, got {shown}")
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.error(key, _expected("true or false", value))
        return value

    def choice(self, key: str, enum: type[E]) -> E | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, _expected("a string", value))
        choices = [e.value for e in enum]
        if value not in choices:
            raise self.error(key, f"invalid value {show(value)} (one of: {', '.join(choices)})")
        return enum(value)

    def _check(
        self, key: str, value: str, check: Callable[[str], None], index: int | None = None
    ) -> None:
        try:
            check(value)
        except ValueError as exc:
            raise self.error(key, str(exc), index) from None


def first_set(*values: T | None) -> T:
    """The first value that is set (the last one is the built-in default)."""
    for value in values:
        if value is not None:
            return value
    raise AssertionError("no default given")


def _expected(what: str, value: object) -> str:
    return f"expected {what}, got {_type_name(value)}"


def _type_name(value: object) -> str:
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
        (list, "array"), (dict, "table"), (datetime, "datetime"), (date, "date"), (time, "time"),
    )  # fmt: skip
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def _quote_key(part: str) -> str:
    return json.dumps(part if len(part) <= 64 else part[:40] + "...")
