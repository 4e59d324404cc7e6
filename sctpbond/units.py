"""Human-friendly sizes and rates on the command line (64M, 1.5G, 500Mbit), and rates for display (Mbit/s)."""

from __future__ import annotations

import re

from .errors import UsageError

MiB = 1 << 20
GiB = 1 << 30

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str, what: str = "size") -> int:
    """Bytes from '65536', '256K', '64M', '1G' (binary multiples: K = 1024)."""
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"bad {what} {text!r}: use a number with an optional K, M, G or T suffix")
    value = float(m.group(1)) * 1024 ** _POW[m.group(2).lower()]
    return int(value)


_RATE_BITS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:bit|bps)(?:/s)?\s*$", re.IGNORECASE)


def parse_rate(text: str, what: str = "rate") -> float:
    """Bytes per second from '500M' (bytes, binary multiples as for sizes) or '100Mbit' / '1Gbps' (bits, decimal
    multiples as link rates are quoted)."""
    m = _RATE_BITS.match(str(text))
    if m:
        rate = float(m.group(1)) * 1000 ** _POW[m.group(2).lower()] / 8
    else:
        try:
            rate = parse_size(text.removesuffix("/s"), what)
        except UsageError:
            raise UsageError(f"bad {what} {text!r}: use bytes per second (500M) or bits (100Mbit)") from None
    if rate <= 0:
        raise UsageError(f"{what} must be positive")
    return float(rate)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def mbit(nbytes: float, seconds: float) -> float:
    return nbytes * 8 / max(seconds, 1e-9) / 1e6
