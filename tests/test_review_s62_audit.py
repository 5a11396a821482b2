"""Review of f251bb1 (a LAUD-ResNet mode written with spaces is taken, as a spaced
granularity is; the CLI writes --mode back without them): the places that read a mode or
a per-stage text without that normalisation, and the CLI's text options beside it."""

from __future__ import annotations

import pytest

from laudtriton.cli import main
from laudtriton.nn import LaudResNet, laud_resnet50
from laudtriton.predict import model_specs
from laudtriton.tune.layout_options import parse_stages

TINY = dict(width_mult=0.25, input_size=None)


# --- the predictor's specs of a model: they refuse the spaced mode the model takes ----

@pytest.mark.parametrize("mode, plain", [
    (" layer ", "layer"),
    (" spatial - channel - layer - both ", "spatial-channel-layer-both"),
    ([" layer", "layer ", "layer", "layer"], "layer"),
])
def test_model_specs_takes_a_spaced_mode_as_the_model_does(mode, plain):
    """laud_resnet50(mode=" layer ") is built (f251bb1) and model_specs takes a spaced
    granularity (" 4 - 4 - 2 - 1 "), but model_specs(mode=" layer ") was refused:
    "--mode ' layer ': ' layer ' unknown"; its specs are the model's blocks'."""
    assert laud_resnet50(mode=mode, input_size=None).config["mode"] == \
        laud_resnet50(mode=plain, input_size=None).config["mode"]
    assert model_specs("laud_resnet50", granularity=" 4 - 4 - 2 - 1 ")  # (taken)
    assert model_specs("laud_resnet50", mode) == model_specs("laud_resnet50", plain)


# --- LaudResNet: channel_masker, its other text per-stage option, stays unstripped ----

@pytest.mark.parametrize("masker", [" MLP ", "MLP - MLP - conv_linear - MLP"])
def test_channel_masker_takes_spaces_as_mode_and_granularity_do(masker):
    """mode " channel - channel - ... ", granularity, channel_masker_layers (" 1 ") and
    channel_masker_reduction (" 8 ") all take spaces around a stage; channel_masker
    alone was refused ("not valid (stage 1: 'MLP ')")."""
    plain = masker.replace(" ", "")
    want = LaudResNet((1, 1, 1, 1), mode="channel", channel_masker=plain,
                      **TINY).config["channel_masker"]
    got = LaudResNet((1, 1, 1, 1), mode=" channel - channel - channel - channel ",
                     channel_masker=masker, **TINY).config["channel_masker"]
    assert got == want


# --- parse_stages: a space str.strip removes and int() does not (\x1c-\x1f) -----------

@pytest.mark.parametrize("text, want", [("4-4-2-1\x1c", [4, 4, 2, 1]), ("\x1f2", [2] * 4)])
def test_parse_stages_takes_the_spaces_strip_removes(text, want):
    """str.strip() removes \x1c-\x1f (str.isspace) but int() refuses them: the check
    passed and int() raised its own "invalid literal for int() with base 10: '1\x1c'",
    without the flag or the accepted forms. They are now taken as the spaces they are,
    as a mode takes them, in the CLI and in the model alike."""
    assert parse_stages(text, "--granularity") == want
    assert LaudResNet((1, 1, 1, 1), granularity=text, **TINY).config["granularity"] == want


def test_predict_takes_a_separator_character_in_a_granularity(capsys):
    """Through the CLI: `laudtriton predict --channel-granularity $'2\x1c'` printed
    "laudtriton predict: error: invalid literal for int() with base 10: '2\x1c'"."""
    assert main(["predict", "--hardware", "v100", "--no-fit", "--rates", "0.5",
                 "--mode", "channel", "--channel-granularity", "2\x1c"]) == 0
    assert "error" not in capsys.readouterr().err


# --- bench's rows: the mode as typed, not as the model runs it -------------------------

def test_bench_rows_record_the_mode_the_model_runs(monkeypatch, tmp_path):
    """bench(mode=" layer ") runs a layer model since f251bb1 (it was refused); its rows
    (and CSV) held mode " layer ", as typed, where the CLI writes --mode back as
    "layer" (check_layout_options). A tiny model stands in for ResNet-50 (speed)."""
    import laudtriton.bench as bench_mod
    from laudtriton import runtime

    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path))

    def tiny(name, mode, granularity, channel_granularity, seed):
        return bench_mod.randomize_bn(LaudResNet(
            (1, 1, 1, 1), mode=mode, granularity=granularity,
            channel_granularity=channel_granularity, **TINY)).eval()

    monkeypatch.setattr(bench_mod, "_seeded_model", tiny)
    rows = bench_mod.bench("laud_resnet50", " layer ", "4-4-2-1", [0.5], reps=1,
                           tune="off", blocks=False, progress=False,
                           allocator=runtime.allocator_setting(), log=lambda *a: None)
    assert {r.mode for r in rows} == {"layer"}


# --- the CLI's number options: int()/float() read what --rates and int_list refuse -----

def _code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # an argparse refusal
        return e.code


@pytest.mark.parametrize("text", ["0.2_5", "\uff10.\uff15"])
def test_target_rate_refuses_what_rates_refuses(text, capsys):
    """--rates '0.2_5' and '０.５' are refused (parse_rates: "float() alone also read
    '０.5' and '0.2_5'"); design's --target-rate (type=float) took them as 0.25 and 0.5
    (demo's --rate too: `demo --rate 1_5` said "--rate must be in [0, 1], got 15.0")."""
    assert _code(["design", "--hardware", "v100", "--no-fit", "--modes", "layer",
                  "--top", "1", "--target-rate", text]) == 2
    assert "--target-rate" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["1_0", "\u0662"])
def test_batch_refuses_what_batches_and_granularities_refuse(text, capsys):
    """int_list (design --granularities, gpucheck --batches) and parse_stages refuse
    '1_0' and non-ASCII digits; --batch (type=int) took '1_0' as batch 10 and '٢' as 2."""
    assert _code(["predict", "--hardware", "v100", "--no-fit", "--rates", "0.5",
                  "--batch", text]) == 2
    assert "--batch" in capsys.readouterr().err


def test_cli_mode_message_says_why_as_granularity_does(capsys):
    """--granularity '4-4' says "has 2 stages; LAUD-ResNet has 4", as LaudResNet's own
    message for mode 'spatial-layer' does; check_mode dropped that message and called the
    mode "unknown" (its two stage modes are known ones)."""
    assert _code(["predict", "--hardware", "v100", "--no-fit", "--rates", "0.5",
                  "--mode", "spatial-layer"]) == 2
    assert "2 stages" in capsys.readouterr().err


def test_the_number_types_read_ascii_numbers_only():
    """ascii_int and ascii_float (tune.numbers): what int() and float() read beyond ASCII
    numbers is refused; signs, spaces around, exponents, nan and inf (left to each
    option's range check, which names them) are taken."""
    from laudtriton.tune.numbers import ascii_float, ascii_int

    assert [ascii_int(t) for t in (" 8 ", "-2", "+3", "007")] == [8, -2, 3, 7]
    for bad in ("1_0", "\u0662", "", " ", "1e3", "0x10", "1.0", "1,5", "\uff11"):
        with pytest.raises(ValueError):
            ascii_int(bad)
    got = [ascii_float(t) for t in ("0.5", ".5", "5.", "-1e-3", " 2E+2 ", "+1")]
    assert got == [0.5, 0.5, 5.0, -1e-3, 200.0, 1.0]
    assert [str(ascii_float(t)) for t in ("nan", "inf", "-Infinity")] == ["nan", "inf", "-inf"]
    for bad in ("0.2_5", "\uff10.\uff15", "", ".", "1e", "e3", "1.2.3", "0x1p3", "nanx"):
        with pytest.raises(ValueError):
            ascii_float(bad)
    assert (ascii_int.__name__, ascii_float.__name__) == ("int", "float")


def test_an_integer_flag_still_says_invalid_int_value(capsys):
    """argparse's message for a bad number keeps its words ("invalid int value")."""
    assert _code(["bench", "--batch", "x"]) == 2
    assert "argument --batch: invalid int value: 'x'" in capsys.readouterr().err
