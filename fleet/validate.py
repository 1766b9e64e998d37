"""Checking config values: the typed reader of a TOML table, and the validators.

Every value that can reach a remote shell, a path, a unit name or an SQL row is checked against
a conservative alphabet (and is shell-quoted as well). `Table` reads one TOML table of
fleet.toml, refusing unknown keys and values of the wrong type; an error is one line naming the
file, the table and the key:

    fleet.toml: hosts.alpha.branch: invalid git branch name '-x' (must not start with '-')

`Table`'s readers return None for an absent key, and `first_set` takes the first value set:
that is how precedence (a host's table, then `[defaults]`, then a built-in value) is written.

The validators (`check_*`) raise `InvalidValue` (a ValueError) with a one-line reason; they
are public so that the CLI can check values given on the command line the same way.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import StrEnum
from typing import TypeVar

from fleet.errors import ConfigError
from fleet.models import is_valid_name

MAX_SECONDS = 7 * 24 * 3600.0

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Reading TOML tables

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
        if what == "host" and name == "controller":
            raise self.error(name, "'controller' is reserved for the controller's own ops")
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


def show(value: str) -> str:
    """A value for an error message: quoted, escaped to one line, shortened."""
    if len(value) <= 64:
        return repr(value)
    return f"{value[:40]!r}... ({len(value)} characters)"


# ---------------------------------------------------------------------------------------------
# Validators: each raises InvalidValue with a one-line reason


class InvalidValue(ValueError):
    """A value a validator refuses: what it is, the value, and why (one line)."""

    def __init__(self, what: str, value: str, why: str) -> None:
        self.what, self.value, self.why = what, value, why
        super().__init__(f"invalid {what} {show(value)} ({why})")


@dataclass(frozen=True)
class _Alphabet:
    """A value restricted to a pattern of ASCII characters and a length."""

    what: str
    pattern: re.Pattern[str]
    why: str
    max_len: int

    def check(self, value: str) -> None:
        if len(value) > self.max_len:
            raise InvalidValue(self.what, value, f"longer than {self.max_len} characters")
        if value.startswith("-"):
            raise InvalidValue(self.what, value, "must not start with '-'")
        if not self.pattern.fullmatch(value):
            raise InvalidValue(self.what, value, self.why)


NAME_RULE = "letters, digits, _ . -, at most 63 characters, not starting with '-' or '.'"
ADDRESS = _Alphabet(
    "address",
    re.compile(r"[A-Za-z0-9_:][A-Za-z0-9._:-]*"),
    "a host name, IP address or ssh alias: letters, digits, . _ : -",
    253,
)
USER = _Alphabet(  # POSIX portable names; upper case is harmless (macOS, directory users)
    "user name",
    re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*"),
    "letters, digits, _ . -, not starting with a digit",
    32,
)
LOCAL_PATH = _Alphabet(
    "path",
    re.compile(r"(?:/|~/|~$)[A-Za-z0-9._+,@%=/-]*"),
    "an absolute or ~/ path of letters, digits and . _ + , @ % = / -",
    4096,
)
REMOTE_PATH = _Alphabet(
    "path",
    re.compile(r"/[A-Za-z0-9._+,@%=/-]*"),
    "an absolute path of letters, digits and . _ + , @ % = / -",
    4096,
)
REF = _Alphabet(
    "git ref",
    re.compile(r"[A-Za-z0-9._/-]+"),
    "letters, digits and . _ / -",
    255,
)
REMOTE = _Alphabet(
    "git remote name",
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*"),
    "a remote's name: letters, digits, . _ -",
    255,
)
FLAKE_ATTR = _Alphabet(
    "flake attribute",
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*"),
    "letters, digits, _ . -, not starting with '.'",
    255,
)
FLAKE_INPUT = _Alphabet(
    "flake input name",
    re.compile(r"[A-Za-z_][A-Za-z0-9_-]*"),
    "a Nix identifier: letters, digits, _ -, not starting with a digit",
    63,
)
UNIT = _Alphabet(
    "systemd unit name",
    re.compile(r"[A-Za-z0-9:_@\\][A-Za-z0-9:_.@\\-]*\.(?:service|socket|target|timer|path|mount)"),
    "letters, digits, : _ . @ \\ -, ending in .service, .socket, .target, .timer, .path or .mount",
    255,
)
EMAIL = _Alphabet(
    "git email",
    re.compile(r"[A-Za-z0-9._+][A-Za-z0-9._+-]*@[A-Za-z0-9][A-Za-z0-9.-]*"),
    "user@host of letters, digits, . _ + -",
    254,
)
HOP_RE = re.compile(
    r"(?:ssh://)?(?:(?P<user>[^@]*)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\[\]]+)(?::(?P<port>[0-9]{1,5}))?"
)


def check_address(value: str) -> None:
    ADDRESS.check(value)


def check_user(value: str) -> None:
    USER.check(value)


def check_remote_path(value: str) -> None:
    """An absolute path on a host (repo, system_profile, run_dir); `~` is not expanded there."""
    if value.startswith("~"):
        raise InvalidValue("path", value, "must be absolute: '~' is not expanded on the host")
    REMOTE_PATH.check(value)
    _check_components(value)


def check_local_path(value: str) -> None:
    """An absolute or ~/ path on the controller (identity files, known_hosts, controller repo)."""
    LOCAL_PATH.check(value)
    _check_components(value)


def _check_components(value: str) -> None:
    if "/../" in f"/{value}/" or "/./" in f"/{value}/":
        raise InvalidValue("path", value, "must not contain '.' or '..' components")


def check_git_ref_rules(value: str, what: str) -> None:
    """The rules of git check-ref-format, within the REF alphabet."""
    REF.check(value)
    parts = value.split("/")
    if ".." in value:
        raise InvalidValue(what, value, "must not contain '..'")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise InvalidValue(what, value, "must not start or end with '/' or contain '//'")
    if value.endswith(".") or any(p.startswith(".") or p.endswith(".lock") for p in parts):
        raise InvalidValue(what, value, "no part may start with '.' or end with '.lock' or '.'")


def check_branch(value: str) -> None:
    try:
        check_git_ref_rules(value, "git branch name")
    except InvalidValue as exc:
        raise InvalidValue("git branch name", value, exc.why) from None
    if value == "HEAD":
        raise InvalidValue("git branch name", value, "HEAD is not a branch")


def check_remote(value: str) -> None:
    REMOTE.check(value)
    if ".." in value or value.endswith((".lock", ".")):
        raise InvalidValue(
            "git remote name", value, "must not contain '..' or end with '.lock' or '.'"
        )


def check_pr_ref(value: str) -> None:
    """A ref with a `{pr}` placeholder, e.g. refs/pull/{pr}/head."""
    if "{pr}" not in value or "{" in value.replace("{pr}", "") or "}" in value.replace("{pr}", ""):
        raise InvalidValue("pr_ref", value, "must contain {pr} and no other placeholder")
    try:
        check_git_ref_rules(value.replace("{pr}", "1"), "pr_ref")
    except InvalidValue as exc:
        raise InvalidValue("pr_ref", value, exc.why) from None


def check_flake_attr(value: str) -> None:
    FLAKE_ATTR.check(value)
    if ".." in value:
        raise InvalidValue("flake attribute", value, "must not contain '..'")


def check_flake_attr_template(value: str) -> None:
    """A flake attribute in which `{name}` stands for the host's name."""
    rest = value.replace("{name}", "")
    if "{" in rest or "}" in rest:
        raise InvalidValue("flake_attr", value, "the only placeholder allowed is {name}")
    try:
        check_flake_attr(value.replace("{name}", "name"))
    except InvalidValue as exc:
        raise InvalidValue("flake_attr", value, exc.why) from None


def check_flake_input(value: str) -> None:
    FLAKE_INPUT.check(value)


def check_unit(value: str) -> None:
    UNIT.check(value)


def check_tag(value: str) -> None:
    if not is_valid_name(value):
        raise InvalidValue("tag", value, NAME_RULE)


def check_op_id(value: str) -> None:
    if not is_valid_name(value):
        raise InvalidValue("op id", value, NAME_RULE)


def check_git_email(value: str) -> None:
    EMAIL.check(value)


def check_proxy_jump(value: str) -> None:
    """OpenSSH's ProxyJump: `[ssh://][user@]host[:port]` hops separated by commas."""
    if len(value) > 1024:
        raise InvalidValue("ProxyJump", value, "longer than 1024 characters")
    for hop in value.split(","):
        match = HOP_RE.fullmatch(hop)
        if not match:
            raise InvalidValue("ProxyJump", value, f"{hop!r} is not [user@]host[:port]")
        user, host, port = match.group("user", "host", "port")
        try:
            if user is not None:
                USER.check(user)
            ADDRESS.check(host.strip("[]"))
        except InvalidValue as exc:
            raise InvalidValue("ProxyJump", value, f"{exc.what} {exc.value!r}: {exc.why}") from None
        if port is not None and not 1 <= int(port) <= 65535:
            raise InvalidValue("ProxyJump", value, f"port {port} is not 1..65535")


def check_git_name(value: str) -> None:
    """Free text (any script), one line, not empty, not starting with '-'."""
    _check_text("git name", value, 255)
    if not value.strip() or value.startswith("-"):
        raise InvalidValue("git name", value, "must not be empty or start with '-'")


def check_description(value: str) -> None:
    _check_text("description", value, 1024)


def check_command(value: str) -> None:
    """A user op's shell command: free text, several lines allowed."""
    _check_text("command", value, 4096, multiline=True)
    if not value.strip():
        raise InvalidValue("command", value, "must not be empty")


def _check_text(what: str, value: str, max_len: int, *, multiline: bool = False) -> None:
    if len(value) > max_len:
        raise InvalidValue(what, value, f"longer than {max_len} characters")
    allowed_controls = "\n\t" if multiline else ""
    if not all(c.isprintable() or c in allowed_controls for c in value):
        kind = "control characters" if multiline else "line breaks or control characters"
        raise InvalidValue(what, value, f"must not contain {kind}")
