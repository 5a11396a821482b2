"""The command-line options that lay out the LAUD model a command builds: ``--mode``
(``check_mode``, ``mode_text``), ``--granularity`` and ``--channel-granularity``
(``parse_stages``, ``stage_text``, their defaults and the stage modes that read them,
``READ_BY``), added to a parser by ``add_layout_options``, checked, also against the
model's stages, by ``check_layout_options``, and written as the tables, CSVs and file names
show them by ``layout_texts``. The bench, sweep, predict and design commands use them;
their other shared options are ``tune.options``'.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from ..nn.block import MODES
from ..nn.stages import MODE_FORMS, array_values, parse_modes


def parse_stages(text: str, flag: str) -> list[int]:
    """"4-4-2-1" or "2" (every stage) -> 4 positive ints, for the per-stage int options
    (``--granularity``, ``--channel-granularity``).

    Raises:
        ValueError: naming ``flag``, the value and the accepted forms.
    """
    items = [i.strip() for i in str(text).split("-")]  # (int() keeps \x1c-\x1f, which
    if len(items) == 1:                                  # strip removes: its own error)
        items *= 4
    if not all(i.isascii() and i.isdigit() and int(i) >= 1 for i in items):
        raise ValueError(f"{flag} {text!r} is not a positive int; accepted: one positive int "
                         "or four joined by '-', e.g. '4-4-2-1'")
    if len(items) != 4:
        raise ValueError(f"{flag} {text!r} has {len(items)} stages; LAUD-ResNet has 4 "
                         "(e.g. '4-4-2-1')")
    return [int(i) for i in items]


def check_mode(text: str, flag: str) -> list[str]:
    """The 4 stage modes of ``text`` if it is a mode a LAUD-ResNet takes
    (``nn.stages.parse_modes``): one of ``MODES`` for every stage, or four joined by '-'
    (one per stage); else a ValueError.

    Raises:
        ValueError: naming ``flag``, the value, why (the model's words: an unknown mode,
            a count of stages other than 4, an empty stage) and the accepted forms.
    """
    try:
        return parse_modes(str(text))  # LaudResNet's own parsing
    except ValueError as e:  # its words after "mode '<text>' ", before its accepted forms
        msg, given = str(e), f"mode {str(text)!r} "
        why = msg[len(given):] if msg.startswith(given) else "unknown"
        why = why.rsplit("; accepted", 1)[0].removesuffix(f" ({MODE_FORMS})")
        raise ValueError(f"{flag} {str(text)!r} {why}; accepted: {', '.join(MODES)}, or "
                         "four joined by '-' (one per stage), e.g. "
                         "'spatial-spatial-channel-layer'") from None


def mode_text(text: str, flag: str = "--mode") -> str:
    """The mode option ``text`` (``check_mode``) written as the tables, CSVs and file
    names show it: " layer " -> "layer", " spatial - layer - ..." -> "spatial-layer-...".

    Raises:
        ValueError: as ``check_mode``.
    """
    modes = check_mode(text, flag)
    return "-".join(modes) if "-" in str(text) else modes[0]


# the defaults of --granularity and --channel-granularity (bench, sweep, predict)
GRANULARITY, CHANNEL_GRANULARITY = "4-4-2-1", "1"
# the stage modes that read each: S for spatial masks, channel groups for channel masks
# (design's --granularities: the S its search gives spatial and both stages)
READ_BY = {"--granularity": ("spatial", "both"), "--channel-granularity": ("channel", "both"),
           "--granularities": ("spatial", "both")}


def add_layout_options(p: argparse.ArgumentParser) -> None:
    """--mode, --granularity, --channel-granularity: the LAUD model's layout, as ``bench``
    and ``sweep`` take it (``check_layout_options`` checks them)."""
    p.add_argument("--mode", default="spatial",
                   help="spatial, channel, layer or both, or one per stage joined by '-' "
                        "(default spatial)")
    p.add_argument("--granularity", default=GRANULARITY,
                   help="patch size S: one int, or one per stage joined by '-' "
                        f"(default {GRANULARITY}; read by spatial and both stages)")
    p.add_argument("--channel-granularity", default=CHANNEL_GRANULARITY,
                   help="channels per channel-mask group: one int, or one per stage "
                        f"joined by '-' (default {CHANNEL_GRANULARITY}; read by channel and "
                        "both stages)")


def options_read(mode: str, granularity: str, channel_granularity: str) -> dict[str, str]:
    """{flag: value} of --granularity and --channel-granularity, each where a stage of
    ``mode`` (one mode, or one per stage joined by '-') reads it (``READ_BY``), in that
    order: the options that reach the model, for a text that describes it (demo's first
    step, predict's table header); echoing the others would misdescribe it.

    Raises:
        ValueError: as ``nn.stages.parse_modes``, for a mode a LAUD-ResNet does not take.
    """
    modes = set(parse_modes(str(mode)))
    values = {"--granularity": granularity, "--channel-granularity": channel_granularity}
    return {flag: value for flag, value in values.items() if modes & set(READ_BY[flag])}


def check_layout_read(modes: Sequence[str], given: dict[str, str], where: str) -> None:
    """A ValueError naming the option when one of ``given`` ({"--granularity": value,
    "--channel-granularity": value}) holds another value than its default while none of
    ``modes`` (the stage modes, or the modes a search ranks; ``where`` names them for the
    message, e.g. "mode 'layer'") reads it (``READ_BY``): the run would be the default's,
    and bench's CSV would record the value given. The default in another form ("1-1-1-1")
    passes."""
    defaults = {"--granularity": GRANULARITY, "--channel-granularity": CHANNEL_GRANULARITY}
    for flag, value in given.items():
        if set(modes) & set(READ_BY[flag]):
            continue
        if parse_stages(value, flag) != parse_stages(defaults[flag], flag):
            raise unread(flag, value, where)


def unread(flag: str, value: str, where: str) -> ValueError:
    """The error for ``flag`` given ``value`` where no mode of ``where`` reads it
    (``READ_BY``)."""
    return ValueError(f"{flag} {value!r} is read only by {' and '.join(READ_BY[flag])} "
                      f"stages, and {where} has none; leave it out")


def stage_text(text: str, flag: str) -> str:
    """The per-stage int option ``text`` (``parse_stages``) written as the tables, CSVs
    and file names show it: " 4-4-2-1" -> "4-4-2-1", "04" -> "4" (one int stays one).

    Raises:
        ValueError: as ``parse_stages``.
    """
    stages = parse_stages(text, flag)
    return str(stages[0]) if "-" not in str(text) else "-".join(map(str, stages))


def layout_texts(mode: object, granularity: object, channel_granularity: object,
                 flags: Sequence[str] = ("mode", "granularity", "channel_granularity")
                 ) -> dict[str, str]:
    """{"mode", "granularity", "channel_granularity"}: the three layout values written
    as the tables, CSVs and file names show them (``mode_text``, ``stage_text``: " layer "
    -> "layer", " 4-4-2-1" -> "4-4-2-1"); four values given by ``bench`` called from
    Python (which the model took: a list, tuple, range, 1-d array or tensor, of numbers,
    0-d arrays or texts, ``nn.stages.per_stage``) are written as the CLI writes them
    ([4, 4, 2, 1], ``np.array([4, 4, 2, 1])``, [" 4 ", "4", "2", "1"] -> "4-4-2-1"),
    another value (a number, a 0-d array) as ``str`` writes its Python value.

    Raises:
        ValueError: as ``mode_text`` or ``stage_text``, naming the value's flag of ``flags``;
            for a list of other than 4 values.
    """
    def text(value: object, norm: Callable[[str, str], str], flag: str) -> str:
        """``value`` as ``norm`` writes its text (a list's values joined by '-')."""
        value = array_values(value, flag, "one value, or four")  # an array: its values
        if isinstance(value, str):
            return norm(value, flag)
        if isinstance(value, (list, tuple, range)):  # (bench's rows said "[4 4 2 1]")
            items = [str(array_values(v, flag, "one value")) for v in value]
            if len(items) != 4:
                raise ValueError(f"{flag} {value!r} has {len(items)} stages; LAUD-ResNet "
                                 "has 4")
            return norm("-".join(items), flag)
        return str(value)
    return dict(mode=text(mode, mode_text, flags[0]),
                granularity=text(granularity, stage_text, flags[1]),
                channel_granularity=text(channel_granularity, stage_text, flags[2]))


def check_layout_options(args: argparse.Namespace) -> None:
    """Raise a ValueError naming the first bad option of ``add_layout_options``, also
    against the model (``args.model``) at its input size (``args.input_size``, else 224):
    an S larger than its stage's map, a channel group size that does not divide a width
    (the model's constructor says so too, but names its own arguments, not the flags).
    Each value is read as its text (``str``: a number or list set from Python is
    checked and named by its flag too). --granularity and --channel-granularity are
    written back as ``stage_text`` gives them (bench's CSV and sweep's file names kept
    " 4-4-2-1" as typed), and --mode without its spaces (" spatial - layer - ..." as
    "spatial-layer-...")."""
    given = {"--granularity": args.granularity,
             "--channel-granularity": args.channel_granularity}  # as typed, for messages
    # as text (str): a list or number set from Python is checked and named by its flag
    # as the CLI's text is (layout_texts would take a list's values as bench's rows)
    texts = layout_texts(str(args.mode), str(args.granularity),
                         str(args.channel_granularity), ("--mode", *given))
    args.mode, args.granularity = texts["mode"], texts["granularity"]
    args.channel_granularity = texts["channel_granularity"]
    check_layout_read(parse_modes(args.mode), given, f"mode {args.mode!r}")
    from ..predict.network import model_specs  # (tune may read predict inside a function)

    size = getattr(args, "input_size", None) or 224
    model_specs(args.model, args.mode, args.granularity, 1, size, "float32",
                args.channel_granularity)
