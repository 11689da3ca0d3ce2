"""The report's table: one model, :class:`Table`, and its two renderers, text and HTML.

Every table the tool shows (the HTML page, the terminal report, the end-of-run summary) is a
:class:`Table` of display strings, rendered by :meth:`Table.to_text` or :meth:`Table.to_html`.

Example:
    >>> print(Table("t", "Sizes", ["batch", "runs"], [["8", "3"], ["512", "12"]]).to_text())
    Sizes
    -----
    batch  runs
    8         3
    512      12
"""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass
class Table:
    """A small table shared by the HTML page and the terminal.

    Args:
        key: Stable name (``answer``, ``best``, ``cells``, ...), used as the HTML id.
        title: Heading.
        headers: Column names (``""`` for a key/value table's first column).
        rows: Cells as display strings.
        note: A sentence under the table.
    """

    key: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""

    def to_text(self, *, titled: bool = True, first_left: bool = True) -> str:
        """Aligned plain-text columns, with the title above and the note below.

        The first column is left-aligned (``first_left``, for labels) or right-aligned like
        the others (numbers); a key/value table (no headers) is left-aligned throughout.
        ``titled=False`` leaves the title and its underline out.
        """
        lines = [self.title, "-" * len(self.title)] if titled else []
        if self.rows:
            cells = [self.headers, *self.rows]
            widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]

            key_value = not any(self.headers)

            def line(row: list[str]) -> str:
                parts = [row[0].ljust(widths[0]) if first_left else row[0].rjust(widths[0])]
                parts += [
                    c.ljust(w) if key_value else c.rjust(w)
                    for c, w in zip(row[1:], widths[1:], strict=True)
                ]
                return "  ".join(parts).rstrip()

            if any(self.headers):
                lines.append(line(self.headers))
            lines += [line(row) for row in self.rows]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def to_html(self) -> str:
        """A ``<table>`` (header row only when the headers are not all empty)."""
        esc = html.escape
        parts = [f'<section id="table-{esc(self.key)}"><h2>{esc(self.title)}</h2>']
        if self.rows:
            parts.append('<table class="kv">' if not any(self.headers) else "<table>")
            if any(self.headers):
                parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in self.headers) + "</tr>")
            for row in self.rows:
                first, rest = row[0], row[1:]
                cell = "th" if not any(self.headers) else "td"
                parts.append(
                    f"<tr><{cell}>{esc(first)}</{cell}>"
                    + "".join(f"<td>{esc(c)}</td>" for c in rest)
                    + "</tr>"
                )
            parts.append("</table>")
        if self.note:
            parts.append(f'<p class="note">{esc(self.note)}</p>')
        parts.append("</section>")
        return "\n".join(parts)
