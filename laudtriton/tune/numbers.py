"""argparse types for the CLI's number options: ``int`` and ``float`` read more than the
ASCII numbers a user means ("1_0" is 10, "٢" is 2, "０.５" is 0.5), which the
per-stage and list options already refuse (``tune.layout_options.parse_stages``,
``tune.options.int_list``, ``parse_rates``). These read only ASCII numbers, with spaces
around them, and keep the names argparse prints: "argument --batch: invalid int value:
'1_0'"."""

from __future__ import annotations

import re

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)",
                    re.IGNORECASE)


def ascii_int(text: str) -> int:
    """``text`` as an int if it is ASCII digits with an optional sign (spaces around it
    allowed), else a ValueError (argparse names the option)."""
    t = text.strip()
    if not (t.isascii() and _INT.fullmatch(t)):
        raise ValueError(text)
    return int(t)


def ascii_float(text: str) -> float:
    """``text`` as a float if it is an ASCII decimal number (a sign, digits with at most
    one point, an exponent) or nan / inf (left to the option's own range check), spaces
    around it allowed; else a ValueError (argparse names the option)."""
    t = text.strip()
    if not (t.isascii() and _FLOAT.fullmatch(t)):
        raise ValueError(text)
    return float(t)


ascii_int.__name__ = "int"  # argparse: "invalid int value: ..."
ascii_float.__name__ = "float"
