"""Parsing the values of the sweep's options (``--rates``, ``--granularity`` /
``--channel-granularity``, ``--mode``, ``--shard``), which the bench, predict and design
commands take as well.
"""

from __future__ import annotations

import math

from ..nn.resnet import MODES, parse_modes

RATE_ROUNDING = 1e-6  # rates are rounded to 6 decimals (cache buckets, CSVs)
MAX_RATES = 1001  # '0:1:0.001'; more would take hours to sweep and GBs to hold


def parse_rates(text: str) -> list[float]:
    """"0.1:1.0:0.1" (start:stop:step, stop included) or "0.25,0.5" -> sorted rates, at
    most MAX_RATES of them (rates are rounded to RATE_ROUNDING).

    Raises:
        ValueError: naming ``--rates``, the value and the accepted forms; a step below
            the rounding or more than MAX_RATES rates (refused before they are built).
    """
    accepted = "accepted: 'start:stop:step' (e.g. '0.1:1.0:0.1') or a list '0.25,0.5'"
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3 or not all(map(math.isfinite, parts)):
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise ValueError
            raw = [start, stop]
        else:
            raw = [float(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--rates {text!r} is malformed; {accepted}") from None
    bad = [r for r in raw if not 0.0 <= r <= 1.0]  # before rounding: -4e-7 is not 0
    if bad:
        raise ValueError(f"--rates {text!r}: rates must lie in [0, 1], got {bad}")
    if ":" not in text:
        rates = [round(r, 6) + 0.0 for r in raw]  # + 0.0: -0.0 is 0.0
    else:
        if step < RATE_ROUNDING:
            raise ValueError(f"--rates {text!r}: step {step:g} is below {RATE_ROUNDING:g}, "
                             "the rounding of rates")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > MAX_RATES:
            raise ValueError(f"--rates {text!r} gives {n} rates; at most {MAX_RATES} "
                             "(e.g. '0:1:0.001')")
        rates = [round(start + i * step, 6) + 0.0 for i in range(n)]
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad or not rates:
        raise ValueError(f"--rates {text!r}: rates must lie in [0, 1], got {bad or rates}")
    if len(set(rates)) > MAX_RATES:
        raise ValueError(f"--rates {text!r} lists {len(set(rates))} rates; at most "
                         f"{MAX_RATES}")
    return sorted(set(rates))


def parse_stages(text: str, flag: str) -> list[int]:
    """"4-4-2-1" or "2" (every stage) -> 4 positive ints, for the per-stage int options
    (``--granularity``, ``--channel-granularity``).

    Raises:
        ValueError: naming ``flag``, the value and the accepted forms.
    """
    items = str(text).split("-")
    if len(items) == 1:
        items *= 4
    if not all(i.strip().isascii() and i.strip().isdigit() and int(i) >= 1 for i in items):
        raise ValueError(f"{flag} {text!r} is not a positive int; accepted: one positive int "
                         "or four joined by '-', e.g. '4-4-2-1'")
    if len(items) != 4:
        raise ValueError(f"{flag} {text!r} has {len(items)} stages; LAUD-ResNet has 4 "
                         "(e.g. '4-4-2-1')")
    return [int(i) for i in items]


def check_mode(text: str, flag: str) -> None:
    """Raise unless ``text`` is a mode a LAUD-ResNet takes (``nn.resnet.parse_modes``):
    one of ``MODES`` for every stage, or four joined by '-' (one per stage).

    Raises:
        ValueError: naming ``flag``, the value and the accepted forms.
    """
    try:
        parse_modes(str(text))  # LaudResNet's own parsing
    except ValueError:
        raise ValueError(f"{flag} {text!r} unknown; accepted: {', '.join(MODES)}, or four "
                         "joined by '-' (one per stage), e.g. 'spatial-spatial-channel-layer'"
                         ) from None


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" (1 <= i <= n) -> (i, n).

    Raises:
        ValueError: naming ``--shard``, the value and the accepted form.
    """
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} is malformed; accepted: 'i/n', e.g. '1/4'") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text!r}: need 1 <= i <= n, e.g. '1/4'")
    return i, n
