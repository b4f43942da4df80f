"""QR codes for invitations and safety numbers, printable in a terminal.

segno is imported inside the functions, not at module level: importing segno pulls in
``urllib.request`` and with it ``socket``, and the protocol package must load no I/O modules
when imported (tests/unit/test_layers.py). Rendering itself is pure computation.
"""

from __future__ import annotations

from typing import Any

#: Error correction level: "M" (15 %) survives a phone screen photographed at an angle while
#: keeping an invitation code small enough to scan from a terminal.
ERROR_LEVEL = "m"

_BLOCKS = {(True, True): " ", (False, True): "\u2580", (True, False): "\u2584"}


def make(text: str) -> Any:
    """A ``segno.QRCode`` for ``text`` (callers may save it as PNG/SVG)."""
    import segno  # lazy: segno imports socket (see module docstring)

    return segno.make(text, error=ERROR_LEVEL, micro=False)


def terminal_lines(text: str, border: int = 2) -> list[str]:
    """The code as lines of Unicode half blocks, two modules per character row.

    Light modules are drawn as blocks and dark ones as spaces, so the code reads correctly on
    the usual light-on-dark terminal (scanners need dark modules on a light background).
    """
    code = make(text)
    rows = [[bool(v) for v in row] for row in code.matrix_iter(scale=1, border=border)]
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        lines.append(
            "".join(_BLOCKS.get((t, b), "\u2588") for t, b in zip(top, bottom, strict=True))
        )
    return lines
