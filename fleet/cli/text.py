"""Text for the terminal: remote output made safe, colour, cell widths, and durations.

Everything a host prints reaches the user through `sanitize_lines`/`output_line`: bytes are
decoded as UTF-8 with replacement, escape sequences and control characters (except tab) are
removed, so a binary or an escape-sequence flood from a host can never garble the terminal.
Colour is plain ANSI SGR, applied only when the caller says so (`color_enabled`). Widths are
counted in terminal cells (wide characters take two), so `truncate`, `pad` and `fit` keep
columns aligned.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# CSI, OSC, DCS/SOS/PM/APC strings, 8-bit CSI and the remaining two-character escapes.
_ESCAPE_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
)
# C0 (but tab), DEL, C1, the bidi overrides/isolates that reorder what follows them, and lone
# surrogates (which a strict UTF-8 stream refuses to encode).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

# SGR parameters by status value (host, op and view-only statuses share one palette).
STATUS_STYLES = {
    "RUNNING": "36",
    "SUCCESS": "32",
    "COMPLETE": "32",
    "FAILED": "1;31",
    "TIMEOUT": "1;31",
    "CANCELLED": "33",
    "SKIPPED": "33",
    "PENDING": "2",
    "WAITING": "2",
    "SLOW": "1;33",
}
BOLD = "1"
DIM = "2"


# ---------------------------------------------------------------------------------------------
# Safe text


def sanitize(text: str) -> str:
    """`text` without escape sequences or control characters (tab is kept)."""
    return _CONTROL_RE.sub("", _ESCAPE_RE.sub("", text))


def one_line(text: str) -> str:
    """`text` as a single safe line: line breaks and tabs become spaces."""
    return sanitize(re.sub(r"[\t\r\n]+", " ", text)).strip()


def output_line(raw: bytes | str) -> str:
    """One line of a command's output as a terminal would leave it, made safe.

    A trailing CR (CRLF) is dropped; for a progress bar redrawn with bare CRs the last
    non-empty segment wins.
    """
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.rstrip("\r")
    if "\r" in text:
        text = next((part for part in reversed(text.split("\r")) if part), "")
    return sanitize(text)


def sanitize_lines(text: str) -> list[str]:
    """`text` (a tail or a log) as safe lines, without trailing blank lines."""
    lines = [output_line(line) for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


class TextSink(Protocol):
    """What a view writes to: a text stream (`sys.stdout`) or a `ViewSink` over one."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def encodable(text: str, stream: TextSink) -> str:
    """`text` with what `stream`'s encoding cannot represent replaced (a view must not raise)."""
    encoding = getattr(stream, "encoding", None)
    if not encoding or "utf" in encoding.lower():
        return text
    return text.encode(encoding, errors="replace").decode(encoding)


# ---------------------------------------------------------------------------------------------
# Colour


def color_enabled(stream: TextSink, color: bool | None = None) -> bool:
    """Colour when asked to, else when `stream` is a TTY and NO_COLOR is unset (or empty)."""
    if color is not None:
        return color
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, sgr: str | None, color: bool) -> str:
    if not (color and sgr and text):
        return text
    return f"\x1b[{sgr}m{text}\x1b[0m"


def status_style(status: str) -> str | None:
    return STATUS_STYLES.get(status)


# ---------------------------------------------------------------------------------------------
# Widths


def char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cell_width(text: str) -> int:
    """How many terminal cells `text` (without escape sequences) takes."""
    return sum(char_width(c) for c in text)


def _prefix(text: str, width: int) -> str:
    """The longest start of `text` that fits in `width` cells."""
    out: list[str] = []
    for char in text:
        width -= char_width(char)
        if width < 0:
            break
        out.append(char)
    return "".join(out)


def truncate(text: str, width: int, ellipsis: str = "…") -> str:
    """`text` cut to at most `width` cells, ending in `ellipsis` when cut."""
    if cell_width(text) <= width:
        return text
    if width <= 0:
        return ""
    return _prefix(text, width - cell_width(ellipsis)) + ellipsis


def pad(text: str, width: int, *, right: bool = False) -> str:
    fill = " " * max(0, width - cell_width(text))
    return fill + text if right else text + fill


@dataclass(frozen=True)
class Styled:
    """A piece of text with an SGR style ("" for none); painted only when colour is on."""

    text: str
    style: str = ""


def fit(segments: Iterable[Styled], width: int, *, color: bool) -> str:
    """Render `segments` as one line of at most `width` cells (an ellipsis marks a cut)."""
    parts = list(segments)
    if sum(cell_width(s.text) for s in parts) > width:
        budget, cut = width - 1, []
        for seg in parts:
            text = _prefix(seg.text, budget)
            budget -= cell_width(text)
            if text != seg.text:
                cut.append(Styled(text + "…", seg.style))
                break
            cut.append(seg)
        parts = cut if width > 0 else []
    return "".join(paint(s.text, s.style, color) for s in parts).rstrip(" ")


# ---------------------------------------------------------------------------------------------
# Durations


def format_duration(seconds: float | None) -> str:
    """1.2s, 2m03s, 1h05m; "" when unknown."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 59.95:  # what rounds to 60.0s is shown as 1m00s
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_clock(seconds: float) -> str:
    """02:13, or 1:02:13 past an hour."""
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60:02d}:{rest % 60:02d}"


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()
