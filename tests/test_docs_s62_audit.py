"""README.md and docs/example.md against the code (session 62's audit): the defaults the
README's Commands table states, the bounds and constants its prose names, the checkpoint
claim about mode and S, what a ``.data`` edit of a compiled model's tensor does, and
docs/example.md's FLOPs floor of the example's network. CPU only, a few seconds."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

import laudtriton
from laudtriton.cli import build_parser
from laudtriton.nn import calibrate_rates, laud_resnet50

ROOT = Path(__file__).resolve().parents[1]


def _one_line(path: Path) -> str:
    """A doc's text with every run of whitespace (line breaks included) as one space."""
    return re.sub(r"\s+", " ", path.read_text())


def _commands() -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``laudtriton``, by name."""
    return next(a for a in build_parser()._actions
                if isinstance(a, argparse._SubParsersAction)).choices


def _default(command: str, option: str):
    """The parser default of ``laudtriton COMMAND OPTION``."""
    parser = _commands()[command]
    return next(a for a in parser._actions if option in a.option_strings).default


def _readme_row(command: str) -> str:
    """README's Commands table row of ``laudtriton COMMAND``."""
    return next(line for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith(f"| `laudtriton {command}"))


def test_readme_demo_row_defaults_are_the_parsers():
    """``(`--rate 0.5`, `--tune cached`, `--reps 20`, `--batch 1`, `--mode spatial`, ...
    by default`` (--batch and the layout options since session 73)."""
    row = _readme_row("demo")
    stated = re.findall(r"`(--[\w-]+) ([^`]+)`", row)
    assert [o for o, _ in stated] == ["--rate", "--tune", "--reps", "--batch", "--mode",
                                      "--granularity", "--channel-granularity"], row
    for option, value in stated:
        assert str(_default("demo", option)) == value, (option, value)


def test_readme_bench_and_gpucheck_rows_defaults_are_the_parsers():
    assert "`--allocator retain` (the default)" in _readme_row("bench")
    assert _default("bench", "--allocator") == "retain"
    budget = re.search(r"`--budget`, default (\d+) s", _readme_row("gpucheck"))
    assert budget and _default("gpucheck", "--budget") == float(budget[1])


def _defaults_missing_from_help() -> list[str]:
    """``COMMAND OPTION`` for each shown option with a default its help does not state: a
    default other than None and a store_true's False (0 too: ``0 in (False,)`` is true,
    and `sweep --prune-top`'s 0 went unchecked until session 69), and every --cache-dir,
    whose None stands for the folder ``laudtriton env`` shows (`predict` and `design`
    did not say so)."""
    missing = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, q in a.choices.items():
                    walk(q, f"{name} {sub}".strip())
            elif (a.option_strings and a.help != argparse.SUPPRESS
                  and ((a.default is not None and a.default is not False
                        and a.default != argparse.SUPPRESS) or a.dest == "cache_dir")
                  and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
                  and "default" not in (a.help or "").lower()):
                missing.append(f"{name} {a.option_strings[-1]}")
    walk(build_parser(), "")
    return missing


def test_help_states_every_default_as_the_readme_says():
    """README: "`laudtriton COMMAND --help` lists every option of a command, with its
    default where it has one"; `bench --repeat` (1) and `plot --device` (cpu) did not."""
    assert "with its default where it has one" in _one_line(ROOT / "README.md")
    assert _defaults_missing_from_help() == []


def test_bench_tune_help_names_the_predictor_of_cached():
    """Session 69: ``bench --tune``'s help said "default cached: the autotune cache, else
    timing on the example input", but where this machine is calibrated the rates the
    cache lacks are the latency predictor's estimates, and nothing is timed
    (``compile``'s docstring)."""
    tune = next(a for a in _commands()["bench"]._actions if "--tune" in a.option_strings)
    assert tune.default == "cached"
    assert "latency predictor" in tune.help and "calibrated" in tune.help


def test_readme_bounds_are_the_codes():
    """The numbers README's Status and allocator sections give for the engine's bounds."""
    from laudtriton import runtime, schedule
    from laudtriton.ops import channel, masks, packed, spatial
    from laudtriton.tune import atomic

    text = _one_line(ROOT / "README.md")
    claims = [
        ("keeps up to 64 sliced patterns and at most 8 times its dense size",
         (channel.CACHE_SIZE, channel.CACHE_WEIGHTS), (64, 8)),
        ("where they have at least 196 rows", channel.GEMM_ROWS, 196),
        ("a convolution keeps a packing per batch size (up to 8)",
         packed.SHAPES_PER_CONV, 8),
        ("the dense weights and downsample (up to 64 sizes)", channel.CACHE_SIZE, 64),
        ("up to 96 row packings per block", spatial.MAX_PACKED, 96),
        ("the mask index tables 256 entries per kind",
         masks._patch_tables.cache_info().maxsize, 256),
        ("keep freed blocks of up to 32 MiB", runtime.MMAP_THRESHOLD_MAX, 32 << 20),
        ("by more than 5% (`laudtriton.schedule.DENSE_MARGIN`)",
         schedule.DENSE_MARGIN, 0.05),
        ("(those over 10 min old)", atomic.ORPHAN_AGE, 600),
    ]
    for phrase, value, stated in claims:
        assert phrase in text, phrase
        assert value == stated, (phrase, value)


def test_checkpoint_keys_record_neither_mode_nor_granularity():
    """README: the keys record neither S nor spatial vs layer mode (same shapes)."""
    assert "the keys record neither S nor spatial vs layer mode" in _one_line(
        ROOT / "README.md")
    shapes = [{k: tuple(v.shape) for k, v in laud_resnet50(**kw).state_dict().items()}
              for kw in (dict(mode="spatial"), dict(mode="layer"),
                         dict(mode="spatial", granularity="2-2-2-2"))]
    assert shapes[0] == shapes[1] == shapes[2]


@pytest.fixture
def example():
    """examples/cluttered_digits.py as a module, under a private name that is removed
    from sys.modules afterwards."""
    name = "_docs_s62_cluttered_digits"
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "examples" / "cluttered_digits.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look the module up while the class is made
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(name, None)


def test_example_flops_floor_is_the_networks(example):
    """docs/example.md: "this network's floor, every mask off, is 0.221 (its FLOPs ratio
    after `calibrate_rates(model, x, 0.0)`)"."""
    floor = re.search(r"this network's floor, every mask off, is (0\.\d+) \(its FLOPs "
                      r"ratio after `calibrate_rates\(model, x, 0\.0\)`\)",
                      _one_line(ROOT / "docs" / "example.md"))
    assert floor, "docs/example.md no longer states the floor"
    model = example.build_model(example.Config()).eval()
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    calibrate_rates(model, x, 0.0)
    with torch.no_grad():
        model(x)
    assert f"{float(model.last_stats.flops_ratio):.3f}" == floor[1]


def _data_edit_seen(mode: str) -> bool:
    """Whether a compiled LAUD-ResNet-50 (``mode``, every block on the ``dense`` variant,
    warmed up) changes its output after its first block's ``w1`` is edited through
    ``.data``."""
    with torch.random.fork_rng():  # the suite's RNG state left as it was
        torch.manual_seed(0)
        model = laud_resnet50(mode=mode, input_size=64).eval()
        x = torch.randn(2, 3, 64, 64)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants="dense",
                            progress=False)
    with torch.no_grad():
        for _ in range(3):
            before = cm(x).clone()
        cm.blocks[0].fb.w1.data.mul_(2.0)
        return not torch.equal(cm(x), before)


def test_a_data_edit_is_seen_where_a_variant_reads_the_tensor_itself():
    """README: an edit through ``.data`` is not tracked: a packed copy keeps the old
    values (spatial ``dense``), a channel block's ``dense`` variant reads the new ones."""
    text = _one_line(ROOT / "README.md")
    assert "bumps no counter and is not seen" not in text
    assert "a channel block's `dense` variant, which reads the tensors themselves" in text
    assert not _data_edit_seen("spatial")
    assert _data_edit_seen("channel")
