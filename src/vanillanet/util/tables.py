"""The one table formatter of the package: aligned plain text for terminals, or markdown for reports."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["render"]


def render(rows: Sequence[Sequence[str]], *, markdown: bool = False, left: int = 1) -> str:
    """``rows[0]`` is the header. Plain text: columns padded, the first ``left`` columns left-aligned, the others
    right-aligned, a rule under the header. Markdown: a pipe table with the same alignment."""
    rows = [[str(c) for c in row] for row in rows]
    if markdown:
        align = ["---" if i < left else "---:" for i in range(len(rows[0]))]
        return "\n".join("| " + " | ".join(r) + " |" for r in [rows[0], align, *rows[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
