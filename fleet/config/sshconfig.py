"""A small resolver of OpenSSH client configuration (~/.ssh/config).

fleet dials hosts with asyncssh, not with ssh(1), yet an `address` in fleet.toml may be an alias
the user already describes in ~/.ssh/config. This module answers the one question fleet needs:
which HostName, User, Port, IdentityFile(s) and ProxyJump would ssh use for this alias?

It follows ssh_config(5) where that matters:

- `Host` lines take several patterns with `*` and `?` wildcards and `!negation`; a block applies
  when at least one positive pattern matches the alias and no negated one does. Matching is
  case-insensitive. Lines before the first `Host` apply to every alias.
- The first obtained value of a keyword wins; `IdentityFile` accumulates (duplicates dropped,
  `none` ignored).
- `Include` takes files and globs, relative to ~/.ssh; an included file starts in the state of
  the block that includes it, and cannot apply anything when that block does not match. A
  glob that matches nothing is ignored, as ssh does; more than 16 nested includes is an error.
- Keywords are case-insensitive; `Keyword value`, `Keyword=value` and `Keyword = value` are
  accepted, as are double- or single-quoted arguments and comments (`#` at the start of a word).
- `HostName` expands `%h` (the alias) and `%%`. `IdentityFile` expands `%%`, `%d` (home),
  `%h` (the resolved host name), `%n` (the alias) and `%u` (the local user), and keeps `~`
  for the transport to expand. Other tokens and `${VAR}` references are left as written
  (fleet's validation then refuses them, naming the file).

It is conservative where it cannot be exact:

- `Match` blocks are skipped: their options are never applied, because evaluating `exec`,
  `canonical`, `final`, `localnetwork` ... would mean running commands or guessing ssh's
  second pass. The one exception is a bare `Match all`, which applies like `Host *`.
- A missing or unreadable config file is treated as empty, as ssh treats the user's config.
  File permissions are not checked, and other keywords (ProxyCommand, CanonicalizeHostname,
  ...) are ignored.
"""

from __future__ import annotations

import getpass
import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import ConfigError

MAX_INCLUDE_DEPTH = 16
KEYWORDS = ("hostname", "user", "port", "identityfile", "proxyjump")


@dataclass(frozen=True)
class SshConfigEntry:
    """What ~/.ssh/config says about one alias; None (or empty) where it says nothing."""

    hostname: str | None = None
    user: str | None = None
    port: int | None = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None  # None also when the config says `ProxyJump none`
    source: str | None = None  # the config file (or the `source` given for text) read


@dataclass(frozen=True)
class _Condition:
    """When a directive applies: a `Host` pattern list, or always/never."""

    patterns: tuple[str, ...] = ()
    always: bool = False

    def matches(self, alias: str) -> bool:
        if self.always:
            return True
        matched = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if _glob_match(pattern[1:] if negated else pattern, alias):
                if negated:
                    return False
                matched = True
        return matched


ALWAYS = _Condition(always=True)
NEVER = _Condition()


@dataclass(frozen=True)
class _Directive:
    keyword: str  # lower case
    args: tuple[str, ...]
    conditions: tuple[_Condition, ...]  # outer blocks (through Include) first
    source: str  # the file, for error messages
    lineno: int


@dataclass(frozen=True)
class SshConfig:
    """A parsed config: the directives fleet cares about, each with the blocks it sits in."""

    directives: tuple[_Directive, ...] = ()
    source: str | None = None
    home: str = field(default_factory=lambda: os.path.expanduser("~"))

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        source: str = "<ssh config>",
        home: str | None = None,
        ssh_dir: Path | None = None,
    ) -> SshConfig:
        """Parse config text; `Include`s are read relative to `ssh_dir` (default ~/.ssh)."""
        home = home if home is not None else os.path.expanduser("~")
        parser = _Parser(home, ssh_dir if ssh_dir is not None else Path(home, ".ssh"))
        parser.read_text(text, source, outer=(), depth=0)
        return cls(tuple(parser.directives), source, home)

    @classmethod
    def load(cls, path: Path, *, home: str | None = None, ssh_dir: Path | None = None) -> SshConfig:
        """Read a config file; a missing or unreadable one is an empty config."""
        text = _read(path)
        if text is None:
            return cls(source=str(path), home=home or os.path.expanduser("~"))
        return cls.parse(text, source=str(path), home=home, ssh_dir=ssh_dir)

    def resolve(self, alias: str) -> SshConfigEntry:
        values: dict[str, str] = {}
        identities: list[str] = []
        for d in self.directives:
            if not all(c.matches(alias) for c in d.conditions):
                continue
            if d.keyword == "identityfile":
                identities.append(d.args[0])
            elif d.keyword not in values:
                values[d.keyword] = d.args[0]
        hostname = _expand(values["hostname"], {"h": alias}) if "hostname" in values else None
        tokens = {"d": self.home, "h": hostname or alias, "n": alias, "u": _local_user()}
        identity_files: list[str] = []
        for value in identities:
            path = _expand(value, tokens)
            if path.lower() != "none" and path not in identity_files:
                identity_files.append(path)
        proxy_jump = values.get("proxyjump")
        return SshConfigEntry(
            hostname=hostname,
            user=values.get("user"),
            port=int(values["port"]) if "port" in values else None,
            identity_files=tuple(identity_files),
            proxy_jump=None if proxy_jump is None or proxy_jump.lower() == "none" else proxy_jump,
            source=self.source,
        )


# ---------------------------------------------------------------------------------------------
# Parsing


class _Parser:
    def __init__(self, home: str, ssh_dir: Path) -> None:
        self.home = home
        self.ssh_dir = ssh_dir
        self.directives: list[_Directive] = []

    def read_text(
        self, text: str, source: str, *, outer: tuple[_Condition, ...], depth: int
    ) -> None:
        block: tuple[_Condition, ...] = ()  # the current Host/Match of this file
        for lineno, line in enumerate(text.split("\n"), start=1):
            try:
                words = split_line(line)
            except ValueError as exc:
                raise _error(source, lineno, str(exc)) from None
            if not words:
                continue
            keyword, args = words[0].lower(), tuple(words[1:])
            if keyword == "host":
                if not args:
                    raise _error(source, lineno, "Host takes at least one pattern")
                block = (_Condition(args),)
            elif keyword == "match":
                block = (ALWAYS if [a.lower() for a in args] == ["all"] else NEVER,)
            elif keyword == "include":
                if not args:
                    raise _error(source, lineno, "Include takes at least one file")
                if depth >= MAX_INCLUDE_DEPTH:
                    raise _error(source, lineno, "too many nested includes (more than 16)")
                self.include(args, outer=(*outer, *block), depth=depth)
            elif keyword in KEYWORDS:
                if len(args) != 1:
                    what = "a value" if not args else "one value"
                    raise _error(source, lineno, f"{words[0]} takes {what}")
                if keyword == "port" and not _is_port(args[0]):
                    raise _error(source, lineno, f"bad Port {args[0][:20]!r} (expected 1..65535)")
                self.directives.append(_Directive(keyword, args, (*outer, *block), source, lineno))

    def include(self, args: Sequence[str], *, outer: tuple[_Condition, ...], depth: int) -> None:
        for arg in args:
            pattern = self.home + arg[1:] if arg == "~" or arg.startswith("~/") else arg
            if not os.path.isabs(pattern):
                pattern = str(self.ssh_dir / pattern)
            for path in sorted(glob.glob(pattern)):
                text = _read(Path(path))
                if text is not None:
                    self.read_text(text, path, outer=outer, depth=depth + 1)


def split_line(line: str) -> list[str]:
    """The words of a config line: keyword first; quotes grouped; a comment ends the line.

    Raises ValueError for an unbalanced quote.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    match = re.match(r"([^\s=]+)\s*(?:=\s*)?(.*)", line)
    assert match is not None  # a non-empty stripped line starts with a non-space
    keyword, rest = match.groups()
    return [keyword, *_split_args(rest)]


def _split_args(text: str) -> Iterator[str]:
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        if text[i] == "#":
            return
        word: list[str] = []
        while i < n and not text[i].isspace():
            if text[i] in "\"'":
                end = text.find(text[i], i + 1)
                if end < 0:
                    raise ValueError("unbalanced quote")
                word.append(text[i + 1 : end])
                i = end + 1
            else:
                word.append(text[i])
                i += 1
        yield "".join(word)


def _error(source: str, lineno: int, message: str) -> ConfigError:
    return ConfigError(f"line {lineno}: {message}", file=source)


def _glob_match(pattern: str, alias: str) -> bool:
    """ssh's match_pattern: `*` and `?` only, case-insensitive (no [...] classes)."""
    pattern = re.sub(r"\*+", "*", pattern.lower())  # `**` is `*`, and cheaper to match
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, alias.lower(), flags=re.DOTALL) is not None


def _is_port(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= 5 and 1 <= int(value) <= 65535


def _expand(value: str, tokens: dict[str, str]) -> str:
    """Expand %x tokens that are known; leave others (and a trailing %) as written."""

    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "%":
            return "%"
        return tokens.get(key, match.group(0))

    return re.sub(r"%(.)", one, value, flags=re.DOTALL)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER
        return ""


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
