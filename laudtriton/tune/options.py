"""The command-line options the commands share: parsing their values (``--rates``,
``--shard``, ``--variants``, comma lists; ``check_rates`` and ``check_shard`` take
``sweep``'s rates and shard in either form) and checking the rest (``--batch``,
``--input-size``, ``--device``), with the one-line error each gives (``fail``). The sweep
and cache, bench, plot, predict, design and gpucheck commands use them. The model's layout
(``--mode``, ``--granularity``, ``--channel-granularity``) is ``layout_options``'; the path
options (cache folders, output paths) are ``paths``'.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence

import torch

from ..nn.maskers import is_positive_int
from .numbers import ascii_float

RATE_ROUNDING = 1e-6  # rates are rounded to 6 decimals (cache buckets, CSVs)
MAX_RATES = 1001  # '0:1:0.001'; more would take hours to sweep and GBs to hold


def parse_rates(text: str) -> list[float]:
    """"0.1:1.0:0.1" (start:stop:step, stop included) or "0.25,0.5" -> sorted rates, at
    most MAX_RATES of them (rates are rounded to RATE_ROUNDING).

    Raises:
        ValueError: naming ``--rates``, the value and the accepted forms; a step below
            the rounding or more than MAX_RATES rates (refused before they are built); a
            rate inside (0, 1) that the rounding takes to 0 or 1 (1e-7, 0.9999999).
    """
    accepted = "accepted: 'start:stop:step' (e.g. '0.1:1.0:0.1') or a list '0.25,0.5'"

    try:  # (ascii_float: float() alone also read '０.5' and '0.2_5' as 0.25)
        if ":" in text:
            parts = [ascii_float(p) for p in text.split(":")]
            if len(parts) != 3 or not all(map(math.isfinite, parts)):
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise ValueError
            raw = [start, stop]
        else:
            raw = [ascii_float(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--rates {text!r} is malformed; {accepted}") from None
    bad = [r for r in raw if not 0.0 <= r <= 1.0]  # before rounding: -4e-7 is not 0
    if bad:
        raise ValueError(f"--rates {text!r}: rates must lie in [0, 1], got {bad}")
    if ":" not in text:
        given = raw
    else:
        if step < RATE_ROUNDING:
            raise ValueError(f"--rates {text!r}: step {step:g} is below {RATE_ROUNDING:g}, "
                             "the rounding of rates")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > MAX_RATES:
            raise ValueError(f"--rates {text!r} gives {n} rates; at most {MAX_RATES} "
                             "(e.g. '0:1:0.001')")
        given = [start + i * step for i in range(n)]
    rates = [round(r, 6) + 0.0 for r in given]  # + 0.0: -0.0 is 0.0
    # a range's float error is no loss: 0.7 + 3 * 0.1 is 0.9999999999999999
    _refuse_rounded_to_an_end(given, rates, f"--rates {text!r}", 1e-9 if ":" in text else 0.0)
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad or not rates:
        raise ValueError(f"--rates {text!r}: rates must lie in [0, 1], got {bad or rates}")
    if len(set(rates)) > MAX_RATES:
        raise ValueError(f"--rates {text!r} lists {len(set(rates))} rates; at most "
                         f"{MAX_RATES}")
    return sorted(set(rates))


def _refuse_rounded_to_an_end(given: Sequence[float], rounded: Sequence[float], what: str,
                              slack: float) -> None:
    """A ValueError naming ``what`` for a rate of ``given`` more than ``slack`` inside
    (0, 1) that the rounding (``rounded``) takes to 0 or 1: timed as masks all off or on."""
    for g, r in zip(given, rounded, strict=True):
        if (r == 0.0 and g > slack) or (r == 1.0 and g < 1.0 - slack):
            raise ValueError(f"{what}: rate {g!r} rounds to {r:g} (rates are rounded to 6 "
                             "decimals); give 0 or 1, or a rate in [1e-06, 0.999999]")


def check_rates(rates: Sequence[float] | str) -> list[float]:
    """``sweep``'s rates, sorted, rounded to 6 decimals and deduplicated.

    Raises:
        ValueError: a string or sequence that is not numbers, or none, or one outside
            [0, 1], or one inside (0, 1) by more than 1e-9 that the rounding takes to 0
            or 1 (1e-7, 0.9999999).
    """
    if isinstance(rates, str):
        rates = parse_rates(rates)
    try:
        given = [float(r) for r in rates]
    except (TypeError, ValueError):
        raise ValueError(f"rates {rates!r} must be a sequence of numbers in [0, 1] or a "
                         "string ('0.25,0.5' or 'start:stop:step')") from None
    rounded = [round(g, 6) for g in given]
    out = sorted(set(rounded))
    if not out or any(not 0.0 <= r <= 1.0 for r in out):
        raise ValueError(f"rates {out!r} must be non-empty and lie in [0, 1]")
    _refuse_rounded_to_an_end(given, rounded, f"rates {given!r}", 1e-9)  # (float error)
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" (1 <= i <= n; ASCII digits, spaces around it ignored) -> (i, n).

    Raises:
        ValueError: naming ``--shard``, the value and the accepted form.
    """
    parts = text.strip().split("/")  # ASCII digits only: int() also read '1_0' as 10
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"--shard {text!r} is malformed; accepted: 'i/n', e.g. '1/4'")
    i, n = (int(p) for p in parts)
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text!r}: need 1 <= i <= n, e.g. '1/4'")
    return i, n


def check_shard(shard: tuple[int, int] | str) -> tuple[int, int]:
    """``sweep``'s shard (i, n) as two ints, from any pair or "i/n".

    Raises:
        ValueError: not a pair of ints with 1 <= i <= n.
    """
    if isinstance(shard, str):
        shard = parse_shard(shard)
    try:  # any pair: a tuple, a list, a numpy array
        pair = tuple(shard)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(map(is_positive_int, pair)) or pair[0] > pair[1]:
        raise ValueError(f"shard {shard!r}: need (i, n), ints with 1 <= i <= n")
    return int(pair[0]), int(pair[1])


def int_list(text: str, flag: str, accepted: str) -> list[int]:
    """The positive ints of the comma list ``text`` given with ``flag`` ("1, 64" ->
    [1, 64]), in ASCII digits (``int`` also reads "٤" and "1_000").

    Raises:
        ValueError: naming the flag, the value and ``accepted`` (what to give) for
            anything else: an empty list or item, a 0, a sign, a decimal point, or more
            than 18 digits (past 4300, ``int`` raises a message of its own).
    """
    items = [t.strip() for t in text.split(",")]
    if not all(t.isascii() and t.isdigit() and len(t) <= 18 and int(t) >= 1
               for t in items):
        raise ValueError(f"{flag} {text!r} is malformed; accepted: {accepted}")
    return [int(t) for t in items]


def comma_items(text: str, flag: str, accepted: str) -> list[str]:
    """The stripped items of the comma list ``text`` given with ``flag``; [] when it has
    none ('' or ','), which each caller refuses in its own words. A ValueError naming the
    flag when some items are empty and others not ('a,,b', 'a,'): a malformed list is
    refused, as a malformed rate list is, not read as 'a,b'. accepted: what to give, for
    the message."""
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        return []
    if not all(items):
        raise ValueError(f"{flag} {text!r} has an empty item; give {accepted}")
    return items


def variant_names(variants: str | Iterable[str], flag: str, accepted: str
                  ) -> tuple[str, ...]:
    """The names in ``variants``, a comma list (``comma_items``: its items stripped) or an
    iterable of names, as a tuple; () when it names none, which each caller refuses in its
    own words. Not checked against the registry. accepted: what to give, for the message
    of a ``variants`` of another type.

    Raises:
        ValueError: naming ``flag``: an empty item in a comma list, not a list of names
            (bytes, whose items are ints, or a number), an item that is not a string.
    """
    if isinstance(variants, str):
        return tuple(comma_items(variants, flag, "a comma list of variants"))
    try:
        if isinstance(variants, (bytes, bytearray)):  # iterated, a name's bytes: ints
            raise TypeError
        names = tuple(variants)  # an iterator is truthy even when empty
    except TypeError:
        raise ValueError(f"{flag} must be {accepted}, got {type(variants).__name__} "
                         f"{variants!r}") from None
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{flag}: {name!r} is not a variant name")
    return names


def parse_variants(variants: str | Iterable[str] | None) -> set[str] | None:
    """The variant names a sweep times, from --variants (``variant_names``: a comma list,
    its items stripped, or an iterable of names; ``dense`` always with them, duplicates
    once), or None (not given) for every one.

    Raises:
        ValueError: naming --variants: empty, an empty item, not a list of names (bytes,
            a number), or an unknown variant (the message lists the known ones).
    """
    from .. import ops  # its import registers the variants

    if variants is None:
        return None
    variants = variant_names(variants, "--variants",
                             "a comma list or a sequence of variant names")
    if not variants:
        raise ValueError("--variants is empty; name one or more variants (dense is "
                         "always timed), or leave it out for every variant")
    try:
        return {ops.get_variant(n).name for n in variants} | {"dense"}
    except ValueError as e:  # an unknown name
        raise ValueError(f"--variants: {e}") from None


def check_sweep_counts(input_size: int | None, batch: int, reps: int | None,
                       warmup: int) -> int | None:
    """``sweep``'s input_size as an int (None stays None), after checking it, ``batch``,
    ``reps`` and ``warmup``.

    Raises:
        ValueError: naming the first of them that is not a (positive) int.
    """
    if input_size is not None:  # (as the model's own: any size its maps allow)
        if not is_positive_int(input_size):
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        input_size = int(input_size)  # (a numpy int is no JSON for the cache's meta)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch {batch!r} must be a positive int")
    if reps is not None and (isinstance(reps, bool) or not isinstance(reps, int) or reps < 1):
        raise ValueError(f"reps {reps!r} must be a positive int, or None to estimate it")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup {warmup!r} must be an int >= 0")
    return input_size


MAX_INPUT_SIZE = 4096  # --input-size: the predictor's mask tables grow with it (a row each)


MAX_BATCH = 4096  # predict takes ~4 s there (a batch of 1e6 ran for minutes); bench and
# sweep at 224x224 would need ~2.5 GB for the input alone (a batch past int64 crashed torch)


def check_batch(value: int, flag: str = "--batch") -> None:
    """A ValueError naming ``flag`` unless ``value`` is in [1, MAX_BATCH]."""
    if not 1 <= value <= MAX_BATCH:
        raise ValueError(f"{flag} {value} must be in [1, {MAX_BATCH}]")


def check_input_size(value: int | None, flag: str = "--input-size") -> None:
    """A ValueError naming ``flag`` unless ``value`` (None: the default) is in [32,
    MAX_INPUT_SIZE] (the stem and the four stages halve it five times)."""
    if value is not None and not 32 <= value <= MAX_INPUT_SIZE:
        raise ValueError(f"{flag} must be in [32, {MAX_INPUT_SIZE}] (the stem and the four "
                         f"stages halve it five times), got {value}")


def fail(command: str, msg: str, code: int = 2) -> int:
    """Print ``laudtriton <command>: error: <msg>`` on one line to stderr; returns ``code``
    (2: bad input), the exit code. Every subcommand reports its errors this way."""
    print(f"laudtriton {command}: error: {msg}", file=sys.stderr)
    return code


def out_of_memory(e: RuntimeError, options: str) -> ValueError:
    """A one-line ValueError naming ``options`` (e.g. "--batch 64") for an allocator's
    refusal (the C allocator's "can't allocate memory", CUDA's "Tried to allocate") or a
    tensor size past int64 ("Storage size calculation overflowed"); any other
    RuntimeError is raised again as it is."""
    if "allocate" not in str(e) and "overflow" not in str(e):
        raise e
    return ValueError(f"{options}: out of memory ({str(e).splitlines()[0][:200]})")


def check_device_name(device: str) -> torch.device:
    """``--device`` as a torch.device; a ValueError naming it unless it is 'cpu' or
    'cuda[:N]' (whether this machine has that GPU is ``check_device``'s test)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} unknown; accepted: 'cpu', 'cuda', 'cuda:N'"
                         ) from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index is not None):
        # 'cpu:1' ran as 'cpu': torch has one CPU device
        raise ValueError(f"--device {device!r} unknown; accepted: 'cpu', 'cuda', 'cuda:N'")
    return dev


def check_device(device: str) -> torch.device:
    """``--device`` as a torch.device; a ValueError naming it unless it is 'cpu' or an
    available 'cuda[:N]'."""
    dev = check_device_name(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: no CUDA GPU is available here; use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s), cuda:0 on")
    return dev
