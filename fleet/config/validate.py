"""The value validators (`check_*`): what fleet accepts in a host, path, ref, unit or name.

Every value that can reach a remote shell, a path, a unit name or an SQL row is checked against
a conservative alphabet (and is shell-quoted as well). A validator raises `InvalidValue` (a
ValueError) with a one-line reason, in which `show` writes the value quoted, on one line and
shortened. The validators are public: fleet.config.toml_table's readers take one to check each
string they read, and fleet.config.inventory re-exports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.models import is_valid_name, parse_proxy_jump


def show(value: str) -> str:
    """A value for an error message: quoted, escaped to one line, shortened."""
    if len(value) <= 64:
        return repr(value)
    return f"{value[:40]!r}... ({len(value)} characters)"


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
    """OpenSSH's ProxyJump (fleet.models.parse_proxy_jump), each hop's user and host checked."""
    if len(value) > 1024:
        raise InvalidValue("ProxyJump", value, "longer than 1024 characters")
    try:
        hops = parse_proxy_jump(value)
    except ValueError as exc:
        raise InvalidValue("ProxyJump", value, str(exc)) from None
    for hop in hops:
        try:
            if hop.user is not None:
                USER.check(hop.user)
            ADDRESS.check(hop.hostname)
        except InvalidValue as exc:
            raise InvalidValue("ProxyJump", value, f"{exc.what} {exc.value!r}: {exc.why}") from None


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
