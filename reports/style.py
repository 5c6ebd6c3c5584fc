"""One look for every page: a verifier's colour and marker, the colours of statuses, the
number formats and the font sizes.  Every figure and table of the report asks here, so a
verifier looks the same on every page and in every run.

Colours and markers come from a fixed order of the verifiers lipbench ships; a plug-in
not in that order gets one from a hash of its name (stable across runs and machines).
Red is kept for unsound results and is no verifier's colour.
"""
from __future__ import annotations

import hashlib
import math

#: the verifiers lipbench ships, in the order they are shown (cheap bounds first)
KNOWN = ("trivial", "eclipse-fast", "eclipse", "eclipse-nn", "lipsdp", "lirpa", "bab", "mip", "lower")
_KNOWN_STYLE = {
    "trivial": ("#1f77b4", "o"),
    "eclipse-fast": ("#ff7f0e", "s"),
    "eclipse": ("#2ca02c", "D"),
    "eclipse-nn": ("#bcbd22", "d"),
    "lipsdp": ("#9467bd", "^"),
    "lirpa": ("#17becf", "P"),
    "bab": ("#8c564b", "X"),
    "mip": ("#e377c2", "*"),
    "lower": ("#7f7f7f", "v"),
}
# for plug-ins: no red (unsound), no grey (lower / not applicable)
_EXTRA_COLORS = ("#393b79", "#637939", "#8c6d31", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1",
                 "#17607a", "#a55194", "#b5cf6b")
_EXTRA_MARKERS = ("h", "p", "8", "<", ">", "H")

UNSOUND = "#d62728"          # unsound results, everywhere
BEST = "#c8f0c8"             # the headline's highlighted cell
NOT_APPLICABLE = "#e6e6e6"   # a verifier that does not apply (unsupported, not installed)
MEASURED = "#dbe9f6"         # a row measured here, next to published (reported) ones

#: statuses, worst first (a status heatmap cell takes the colour of its worst status)
STATUS_ORDER = ("unsound", "error", "oom", "timeout", "license_limit", "not_installed", "unsupported", "ok")
STATUS_COLORS = {"unsound": "#ff8a8a", "error": "#f7b27a", "oom": "#f9cf8f", "timeout": "#fff0a0",
                 "license_limit": "#d9d2f0", "not_installed": "#e6e6e6", "unsupported": "#eeeeee", "ok": BEST}

#: a landscape A4 page, in inches: every page of the report
A4L = (11.69, 8.27)

#: font sizes in points (nothing smaller than SMALL)
TITLE, TEXT, SMALL = 11, 8, 7
RC = {"font.size": TEXT, "axes.titlesize": TEXT, "axes.labelsize": TEXT, "xtick.labelsize": SMALL,
      "ytick.labelsize": SMALL, "legend.fontsize": SMALL, "figure.titlesize": TITLE}


def style(verifier: str) -> tuple[str, str]:
    """(colour, marker) of a verifier: fixed for the shipped ones, a hash of the name otherwise."""
    if verifier in _KNOWN_STYLE:
        return _KNOWN_STYLE[verifier]
    h = int(hashlib.sha1(verifier.encode()).hexdigest(), 16)
    return _EXTRA_COLORS[h % len(_EXTRA_COLORS)], _EXTRA_MARKERS[(h // len(_EXTRA_COLORS)) % len(_EXTRA_MARKERS)]


def order(verifiers) -> list[str]:
    """Verifiers in the report's order: the shipped ones as in KNOWN, then the rest by name."""
    vs = set(verifiers)
    return [v for v in KNOWN if v in vs] + sorted(vs - set(KNOWN))


def worst_status(statuses) -> str:
    s = set(statuses)
    return next((x for x in STATUS_ORDER if x in s), sorted(s)[0] if s else "ok")


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def fmt_num(v, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, trailing zeros kept (1.00, 13.9, 1.23e+03)."""
    if not _finite(v):
        return "-"
    s = f"{float(v):#.{digits}g}"
    return s[:-1] if s.endswith(".") else s


def fmt_g(v, digits: int = 4) -> str:
    """A number with at most ``digits`` significant digits, trailing zeros dropped (1, 13.94); "-" for None."""
    return "-" if v is None else f"{v:.{digits}g}"


def fmt_tight(v) -> str:
    """Tightness (upper / best lower) as every page prints it: three significant digits."""
    return fmt_num(v, 3)


def fmt_s(v) -> str:
    """Seconds: '5.92 ms' below one second, '6.88 s' above."""
    if not _finite(v):
        return "-"
    v = float(v)
    if v < 1.0:
        return f"{fmt_num(v * 1000, 3)} ms"
    return f"{fmt_num(v, 3)} s"


def fmt_share(v) -> str:
    """A share as a whole percentage: '38%'."""
    return "-" if not _finite(v) else f"{100 * float(v):.0f}%"


def fmt_pct(v) -> str:
    """A share as a percentage to one decimal: '41.3%'."""
    return "-" if not _finite(v) else f"{100 * float(v):.1f}%"


def fmt_duration(v) -> str:
    """A training time: '42 s', '12 min', '3.5 h'."""
    if not _finite(v):
        return "-"
    v = float(v)
    if v < 120:
        return f"{v:.0f} s"
    if v < 2 * 3600:
        return f"{v / 60:.0f} min"
    return f"{v / 3600:.1f} h"


def fmt_count(v) -> str:
    """A parameter count: '842', '33.4k', '1.25M'."""
    if not _finite(v):
        return "-"
    v = int(v)
    if v < 10_000:
        return str(v)
    if v < 1_000_000:
        return f"{v / 1e3:.1f}k"
    return f"{v / 1e6:.3g}M"


def fmt_eps(e: float) -> str:
    """A radius: 36/255 for a whole number of 255ths (pixel units, within 1e-6), else the number."""
    k = round(e * 255)
    return f"{k}/255" if abs(e - k / 255) <= 1e-6 else f"{e:g}"
