"""``laudtriton demo --mode/--granularity/--channel-granularity/--batch`` (session 73):
bench's layout options reach the model the demo builds and its first step's words, and
--batch its input; a bad or unread option is refused before the build, an allocator's
refusal named by --batch; a calibration whose masks cannot realise the rate (a layer gate
at batch 1) is said, as bench says it."""

import sys

import pytest

from laudtriton.cli import main


class _StopAtCompile(Exception):
    """Raised by a stand-in for ``compile``: the demo ends where compiling would start."""


@pytest.fixture
def compiled_models(monkeypatch):
    """The models the demo hands to ``compile`` (which then stops the demo)."""
    seen = []

    def stop(model, example_input=None, *args, **kwargs):
        seen.append((model, example_input))
        raise _StopAtCompile

    monkeypatch.setattr(sys.modules["laudtriton.compile"], "compile", stop)
    return seen


def test_demo_builds_the_channel_layout_it_is_given(compiled_models, capsys):
    with pytest.raises(_StopAtCompile):
        main(["demo", "--mode", "channel", "--channel-granularity", "2", "--tune", "off"])
    out = capsys.readouterr().out
    assert "1/4 building LAUD-ResNet-50 (channel, channel granularity 2, random weights)" \
        in out
    assert "note:" not in out  # 2 channels per group realise 0.5
    ((model, x),) = compiled_models
    assert tuple(x.shape) == (1, 3, 224, 224)
    blocks = [b for _, b in model.blocks()]
    assert {b.dyn_mode for b in blocks} == {"channel"}
    assert all(b.masker_spatial is None for b in blocks)
    first = [b for name, b in model.blocks() if name.endswith(".0")]  # each stage's first
    assert [b.masker_channel.groups for b in first] == [64 // 2, 128 // 2, 256 // 2, 512 // 2]


def test_demo_default_layout_is_unchanged(compiled_models, capsys):
    with pytest.raises(_StopAtCompile):
        main(["demo", "--tune", "off"])
    out = capsys.readouterr().out
    assert "1/4 building LAUD-ResNet-50 (spatial, granularity 4-4-2-1, random weights)" in out
    assert "note:" not in out
    ((model, x),) = compiled_models
    assert tuple(x.shape) == (1, 3, 224, 224)
    blocks = [b for _, b in model.blocks()]
    assert [b.granularity for b in blocks] == [4] * 3 + [4] * 4 + [2] * 6 + [1] * 3


def test_demo_says_when_layer_gates_cannot_realise_the_rate(compiled_models, capsys):
    """One image: each layer gate is on or off, and rate 0.5 lands on 0 in every block
    (FLOPs ratio 0.118): the timings would otherwise read as a 0.2x speedup at 0.5."""
    with pytest.raises(_StopAtCompile):
        main(["demo", "--mode", "layer", "--tune", "off"])
    lines = capsys.readouterr().out.splitlines()
    assert "1/4 building LAUD-ResNet-50 (layer, random weights)" in lines
    (note,) = [line for line in lines if line.startswith("    note: rate 0.50: ")]
    assert "the calibrated masks realise 0.000 on average over the blocks" in note
    assert "for a layer gate the batch's samples, 1 here" in note
    assert lines.index(note) < lines.index("3/4 compiling for this machine (tune=off)")


def test_demo_batch_is_its_input_and_calibration_batch(compiled_models, capsys):
    """--batch 2: the gates are calibrated on two images and land on one of them (rate
    0.5, no note), and compile gets the batch as its example input."""
    with pytest.raises(_StopAtCompile):
        main(["demo", "--mode", "layer", "--batch", "2", "--tune", "off"])
    out = capsys.readouterr().out
    assert "note:" not in out
    ((model, x),) = compiled_models
    assert tuple(x.shape) == (2, 3, 224, 224)
    assert float(model.last_stats.flops_ratio) > 0.3  # (batch 1: 0.118, every gate off)


def test_demo_names_batch_when_memory_is_refused(monkeypatch, capsys):
    import laudtriton.cli as cli

    def refused(args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                           "allocate 1 bytes")

    monkeypatch.setattr(cli, "_demo", refused)
    assert main(["demo", "--batch", "3", "--tune", "off"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("laudtriton demo: error: --batch 3: out of memory (")

    def other(args):
        raise RuntimeError("not about memory")

    monkeypatch.setattr(cli, "_demo", other)
    with pytest.raises(RuntimeError, match="not about memory"):
        main(["demo", "--tune", "off"])

    def logits_differ(args):
        raise AssertionError("compiled logits differ")

    monkeypatch.setattr(cli, "_demo", logits_differ)
    with pytest.raises(AssertionError, match="compiled logits differ"):
        main(["demo", "--tune", "off"])


@pytest.mark.parametrize("mode,words", [
    ("both", "both, granularity 4-4-2-1, channel granularity 2"),
    ("spatial-channel-layer-layer",
     "spatial-channel-layer-layer, granularity 4-4-2-1, channel granularity 2"),
    ("layer-layer-channel-channel", "layer-layer-channel-channel, channel granularity 2"),
])
def test_demo_names_the_options_its_stages_read(mode, words, compiled_models, capsys):
    with pytest.raises(_StopAtCompile):
        main(["demo", "--mode", mode, "--channel-granularity", "2", "--tune", "off"])
    assert f"1/4 building LAUD-ResNet-50 ({words}, random weights)" in capsys.readouterr().out


def test_predict_header_names_the_same_options():
    """predict's table header and the demo read one rule (``options_read``)."""
    from laudtriton.predict.commands import layout_text

    assert layout_text("both", "4-4-2-1", "2") == " S 4-4-2-1 channel granularity 2"
    assert layout_text("spatial-layer-layer-layer", "4", "2") == " S 4"
    assert layout_text("layer", "4", "2") == ""


@pytest.mark.parametrize("argv,message", [
    (["demo", "--mode", "bogus"], "--mode 'bogus' unknown"),
    (["demo", "--mode", "channel", "--granularity", "2"],
     "--granularity '2' is read only by spatial and both stages, and mode 'channel' has "
     "none; leave it out"),
    (["demo", "--mode", "channel", "--channel-granularity", "3"],
     "--channel-granularity 3 must divide the stage 1 width 64"),
    (["demo", "--batch", "0"], "--batch 0 must be in [1, 4096]"),
    (["demo", "--granularity", "8-8-8-8"],
     "--granularity '8-8-8-8': S=8 in stage 4 must be in [1, 7] (the 7x7 map)"),
])
def test_demo_refuses_a_bad_layout_before_building(argv, message, compiled_models, capsys,
                                                   monkeypatch):
    import laudtriton.bench as bench_mod

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(bench_mod, "build_model", no_build)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and compiled_models == []
    (line,) = captured.err.splitlines()
    assert line.startswith("laudtriton demo: error: ") and message in line
