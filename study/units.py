"""Byte sizes as people write them (``6GiB``, ``512MiB``, ``1.5GB``, ``1048576``) and back.

Example:
    >>> parse_bytes("512MiB")
    536870912
    >>> format_bytes(536870912)
    '512.00 MiB'
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
#: The largest memory size accepted (1024 TiB): larger ones are typing mistakes, and sizes
#: far beyond it no longer fit the 64-bit counters that hold them.
MAX_BYTES = 1024**5
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int) -> int:
    """Bytes from a size such as ``6GiB``, ``512MiB``, ``1.5GB`` or ``1048576``.

    Binary units are ``KiB MiB GiB TiB`` (and the bare ``K M G T``), decimal units are
    ``kB MB GB TB``; case and a space before the unit do not matter.

    Example:
        >>> parse_bytes("6GiB"), parse_bytes("512 MiB"), parse_bytes("1.5GB"), parse_bytes("4096")
        (6442450944, 536870912, 1500000000, 4096)

    Args:
        text: The size; an ``int`` is taken as bytes.

    Raises:
        ValueError: not a positive size in a known unit; the message shows the accepted forms.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"memory size {text!r} must be a string like '6GiB' or an int of bytes")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"memory size {text} must be a positive number of bytes")
        if text > MAX_BYTES:
            raise ValueError(f"memory size {text} is too large: give at most 1024 TiB")
        return text
    match = _BYTES_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(
            f"memory size {text!r} is not understood: use a number of bytes with an optional "
            "unit, like 6GiB, 512MiB, 1.5GB or 1048576 (units: B, KiB, MiB, GiB, TiB, K, M, G, "
            "T, kB, MB, GB, TB)"
        )
    number = float(match.group(1)) * _UNITS[unit]
    if not number < MAX_BYTES:
        raise ValueError(f"memory size {text!r} is too large: give at most 1024 TiB")
    value = round(number)
    if value <= 0:
        raise ValueError(f"memory size {text!r} must be at least 1 byte")
    return value


def format_bytes(n: float | None) -> str:
    """``n`` bytes in binary units for people, e.g. ``'1.50 GiB'``; ``'-'`` for ``None``.

    The largest unit that keeps the number at least 1, with two decimals (the probe's table
    and the reports print sizes this way).

    Example:
        >>> format_bytes(1536), format_bytes(3 * 1024**3), format_bytes(12), format_bytes(None)
        ('1.50 KiB', '3.00 GiB', '12 B', '-')
    """
    if n is None:
        return "-"
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}"
    raise AssertionError("unreachable")


def format_percent(fraction: float | None, missing: str = "-") -> str:
    """A fraction as a percentage with one decimal, ``missing`` where there is none.

    Example:
        >>> format_percent(0.9234), format_percent(None), format_percent(None, "n/a")
        ('92.3%', '-', 'n/a')
    """
    return missing if fraction is None else f"{100 * fraction:.1f}%"
