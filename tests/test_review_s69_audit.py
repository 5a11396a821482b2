"""Session 69 audit: what ``--help`` and the docs say of defaults and of
``tune="cached"``.

- The README says ``laudtriton COMMAND --help`` lists every option "with its default
  where it has one": ``sweep --prune-top`` (0) and the ``--cache-dir`` of ``predict`` and
  ``design`` did not say theirs.
- ``bench --tune``'s help said "default cached: the autotune cache, else timing on the
  example input", but where this machine is calibrated the rates the cache lacks are
  the latency predictor's estimates, and nothing is timed (``compile``'s docstring).
"""

from __future__ import annotations

import argparse

from laudtriton.cli import build_parser


def _options(parser: argparse.ArgumentParser, path: str = "laudtriton"):
    """(command path, action) for every option that ``--help`` lists, of every
    (sub)command of ``parser``."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif (a.option_strings and a.help != argparse.SUPPRESS
              and not isinstance(a, argparse._HelpAction)):
            yield path, a


def test_every_option_with_a_default_says_it_in_its_help():
    """An option with a default value (not None, not a store_true's False), and every
    --cache-dir (None stands for the directory ``laudtriton env`` shows), names its
    default in its help."""
    missing, seen = [], set()
    for path, a in _options(build_parser()):
        has_default = a.default not in (None, False, argparse.SUPPRESS)
        if has_default or a.dest == "cache_dir":
            seen.add(path)
            if "default" not in (a.help or "").lower():
                missing.append(f"{path} {a.option_strings[-1]}")
    assert {"laudtriton bench", "laudtriton sweep", "laudtriton predict", "laudtriton design",
            "laudtriton cache ls"} <= seen  # the nested commands' options were walked too
    assert missing == []


def test_bench_tune_help_names_the_predictor_of_cached():
    parser = build_parser()
    bench = next(sub for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                 for name, sub in a.choices.items() if name == "bench")
    (tune,) = [a for a in bench._actions if "--tune" in a.option_strings]
    assert tune.default == "cached"
    assert "latency predictor" in tune.help and "calibrated" in tune.help
