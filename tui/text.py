"""Text from the hub on screen, shown literally.

Everything the hub sends is untrusted here: cluster and app names, labels, agent facts and
versions (a lying agent writes those), reasons, resource messages, drift values, event messages
and actors, repo and render errors (a committer writes those), and error details. Two things
go wrong when such a string reaches a widget as it is:

- Markup. `Static.update(str)`, a `str` cell in a `DataTable` and `notify(markup=True)` parse
  Rich/Textual markup: `[link=file:///etc/passwd]` becomes a link, `[bold red]` restyles the
  screen, and `[/]` raises `MarkupError` and takes the TUI down.
- Terminal control. Rich passes ESC and the other C0/C1 controls through to the terminal,
  where `ESC[2J` clears the screen, `ESC]0;...` retitles the window and `ESC]8;;` makes links;
  bidi overrides (U+202E) reorder what is shown, so `prod` can read as `dorp`.

So screens never hand a hub string to a widget: they build `rich.text.Text` objects (which are
never parsed for markup) with `plain()` and `line()`, and those replace every control and
format character with a visible stand-in: C0 controls in caret notation as `cat -v` does
(`\\x1b` is `^[`, a newline `^J`, DEL `^?`), anything else as `<U+202E>`. Overlong strings are
cut with a note saying how much was left out.

This module must never parse markup, and nothing in it may let a control character through.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from rich.style import StyleType
from rich.text import Text

# More than a screen line needs; a 1 MiB reason must not make a column 1 MiB wide.
LIMIT = 1000

# Categories that never reach the terminal: controls (C0, DEL, C1), format characters
# (bidi overrides and isolates, zero-width characters), line and paragraph separators, and
# lone surrogates.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _stand_in(ch: str) -> str:
    code = ord(ch)
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


def visible(value: str, *, limit: int = LIMIT) -> str:
    """`value` with every control or format character replaced by a visible stand-in, cut
    at `limit` characters. Safe to show anywhere, including as markup-free plain text."""
    if len(value) > limit:
        value = f"{value[:limit]}… ({len(value) - limit} more characters)"
    if value.isprintable():  # the common case, checked in C
        return value
    return "".join(_stand_in(ch) if unicodedata.category(ch) in _HIDDEN else ch for ch in value)


def plain(value: str, style: StyleType = "") -> Text:
    """One untrusted string as a Text: shown literally, on one line (for table cells)."""
    return Text(visible(value), style=style, no_wrap=True, end="")


Part = str | Text | tuple[str, StyleType]


def line(*parts: Part) -> Text:
    """A line built from pieces: every `str` (and `(str, style)`) piece is cleaned with
    `visible()`, so literal labels and hub strings can be mixed freely; `Text` pieces are
    taken as they are (build them with `plain()` or `line()`)."""
    out = Text(end="")
    for part in parts:
        if isinstance(part, Text):
            out.append_text(part)
        elif isinstance(part, tuple):
            out.append(visible(part[0]), style=part[1])
        else:
            out.append(visible(part))
    return out


def lines(rows: Iterable[Text]) -> Text:
    """Several lines in one Text: the only place a newline is put into shown text."""
    return Text("\n", end="").join(rows)


def paragraph(value: str, *, first: str, indent: str = "    ", most: int = 6) -> list[Text]:
    """A multi-line hub string (a renderer's error output) as lines: the first after the
    `first` label, the rest indented under it so they cannot pass for lines of their own,
    at most `most` of them."""
    rows = value.splitlines() or [""]
    out = [line(first, rows[0])] + [line(indent, row) for row in rows[1:most]]
    if len(rows) > most:
        out.append(line(indent, f"… ({len(rows) - most} more lines)"))
    return out
