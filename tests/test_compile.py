"""laudtriton.compile: compiled output == reference (eval) for every mode and CPU variant,
whole models included; the API's errors and plan."""

import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import laudtriton
from laudtriton.nn import LaudResNet, calibrate_rates, laud_resnet50
from laudtriton.ops import all_variants
from laudtriton.testing import assert_close, assert_same_masks, make_block, randomize_bn

CPU_VARIANTS = {
    mode: sorted(v.name for v in all_variants() if mode in v.modes and "cpu" in v.backends)
    for mode in ("spatial", "channel", "layer", "both")
}
CASES = [(mode, v) for mode, names in CPU_VARIANTS.items() for v in names]


def tiny_model(mode, granularity="2-2-1-1", channel_granularity=2, seed=0):
    torch.manual_seed(seed)
    m = LaudResNet((1, 2, 1, 1), mode=mode, granularity=granularity,
                   channel_granularity=channel_granularity, width_mult=0.25, input_size=None,
                   num_classes=7)
    return randomize_bn(m).eval()


def spread(batch, hw, seed=0):
    """Images with a per-sample scale and offset: the pooled features, hence every
    block's masks (spatial grid, channel groups, layer gate), differ between samples."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *hw, generator=g)
    return x * (1 + torch.arange(batch).view(batch, 1, 1, 1)) + 2 * torch.randn(
        batch, 3, 1, 1, generator=g)


def assert_masks_differ_per_sample(model, mode):
    """Every block gives some sample other masks than sample 0 (the case a variant that
    ran the whole batch on one sample's masks would fail)."""
    kinds = {"spatial": ["grid"], "channel": ["channel"], "layer": ["grid"],
             "both": ["grid", "channel"]}[mode]
    for name, blk in model.blocks():
        for kind in kinds:
            t = getattr(blk.last_masks, kind)
            assert any(not torch.equal(t[0], t[i]) for i in range(1, t.shape[0])), (
                f"{name}: every sample has the same {kind} mask")


# odd sizes: S does not divide every map; the second shape has S = 7 (16x15 map, not
# dividing it) and S = 8 (8x8, a 1x1 grid at stride 2), at batch 1
SHAPES = [("2-2-1-1", (45, 37), 3), ("7-8-2-1", (64, 58), 1)]


def assert_blocks_match(cm, model, x):
    """Every compiled block, run alone on the reference block's input (as a CompiledModel
    runs it: ``reuse_input``, the in-place variants writing over it), gives the reference
    block's output: the logits alone can hide a wrong pixel that no later mask or stride
    reads (a mutation dropping one active pixel of a 2-2-1-1 model's layer2.1 moved its
    logits by 2e-7)."""
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, o: seen.append((a[0].clone(), o.clone())))
             for _, b in model.blocks()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(cm.blocks)
    with torch.no_grad():
        for blk, (inp, want) in zip(cm.blocks, seen):
            got = blk(inp.contiguous(memory_format=torch.channels_last), reuse_input=True)
            assert_close(got, want, name=f"{blk.name}'s output")


def _compiled_matches(mode, variant, granularity, x, rate):
    """(tiny model calibrated to ``rate`` on x, its compile with ``variant`` forced), once
    the compiled logits, every block's masks and every block's output are checked equal
    to the reference's."""
    model = tiny_model(mode, granularity=granularity)
    calibrate_rates(model, x, rate)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=[variant])
    with torch.no_grad():
        ref = model(x)
        out = cm(x)
    assert_close(out, ref)
    assert_same_masks(cm, model)
    assert_blocks_match(cm, model, x)
    return model, cm


@pytest.mark.parametrize("mode,variant", CASES)
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("granularity,hw,batch", SHAPES, ids=["b3-S2", "b1-S7-S8"])
def test_tiny_model_every_variant(mode, variant, rate, granularity, hw, batch):
    if mode == "layer" and batch == 1 and 0 < rate < 1:
        batch = 2  # one gate per sample: at batch 1, rate 0.5 calibrates every gate off
    model, cm = _compiled_matches(mode, variant, granularity, spread(batch, hw), rate)
    if mode == "layer" and 0 < rate < 1:  # some samples skip a block, others run it
        assert any(0 < b.last_masks.grid.mean() < 1 for _, b in model.blocks())
    if batch > 1 and rate == 0.5:
        assert_masks_differ_per_sample(model, mode)
    used = {r.variant for r in cm.last_stats}
    assert used <= {variant, "dense"}
    if variant != "dense":  # it ran on some block (patch: on those where S divides Ho)
        assert variant in used


@pytest.mark.parametrize("mode,variant", [c for c in CASES if c[0] in ("spatial", "both")])
def test_tiny_model_large_cells_partly_on_at_batch_3(mode, variant):
    """S = 8 and S = 4 on maps they cut into several cells (layer1 32x30: a 4x3 grid
    of 8x8 cells, the last column 10 wide; layer2 16x15 at S = 4: 4x3, ragged too),
    batch 3 with masks that differ per sample, at rate 0.5: SHAPES' S = 8 blocks see a
    1x1 grid, all on or all off."""
    model, cm = _compiled_matches(mode, variant, "8-4-2-1", spread(3, (128, 120)), 0.5)
    assert_masks_differ_per_sample(model, "spatial")  # the grids (S is the grid's)
    grids = [b.last_masks.grid for _, b in model.blocks()][:3]  # S = 8, 4, 4
    assert all(g.shape[-2:] == (4, 3) and 0 < g.mean() < 1 for g in grids)
    if variant != "dense":
        assert variant in {r.variant for r in cm.last_stats}


@pytest.mark.parametrize("mode,variant", CASES)
def test_laud_resnet50_every_mode(mode, variant):
    """Each CPU variant forced (the fastest on the example input would be the timer's
    choice), on two images with different masks in every block."""
    torch.manual_seed(1)
    model = randomize_bn(laud_resnet50(mode=mode, granularity="4-4-2-1", channel_granularity=2,
                                       input_size=128, num_classes=10)).eval()
    x = spread(2, (128, 128))
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=[variant])
    with torch.no_grad():
        assert_close(cm(x), model(x), name=f"LAUD-ResNet-50 {mode} {variant} logits")
    assert_same_masks(cm, model)
    assert_masks_differ_per_sample(model, mode)
    assert_blocks_match(cm, model, x)
    assert len(cm.last_stats) == 16
    used = {r.variant for r in cm.last_stats}
    assert used <= {variant, "dense"} and (variant == "dense" or variant in used)


def test_different_masks_per_sample_and_new_inputs():
    """The plan is made on one input; other inputs (other masks, rates) stay exact."""
    model = tiny_model("spatial")
    x = spread(3, (40, 40))
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=["gather"])
    with torch.no_grad():
        assert_close(cm(x), model(x))
    assert_masks_differ_per_sample(model, "spatial")
    for seed in range(3):
        y = spread(3, (40, 40), seed=seed + 1) * (seed + 1)
        with torch.no_grad():
            assert_close(cm(y), model(y))
        assert_same_masks(cm, model)


def test_inputs_are_never_overwritten():
    """Blocks of a compiled LaudResNet write into the model's own activations, never into
    the caller's tensor; a compiled bare block (its input is the caller's) runs out of place.
    """
    model = tiny_model("layer", granularity="1-1-1-1")
    x = torch.randn(2, 3, 40, 40).contiguous(memory_format=torch.channels_last)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    keep = x.clone()
    with torch.no_grad():
        assert_close(cm(x), model(x))
    assert torch.equal(x, keep)
    block = make_block(32, 8, mode="layer", seed=2)
    y = torch.relu(torch.randn(4, 32, 9, 9)).contiguous(memory_format=torch.channels_last)
    laudtriton.nn.calibrate_block(block, y, 0.5)
    cb = laudtriton.compile(block, y, backend="cpu", tune="off", variants=["compact"])
    keep = y.clone()
    with torch.no_grad():
        assert_close(cb(y), block(y))
    assert torch.equal(y, keep)


@pytest.mark.parametrize("mode,variant", [("channel", "slice"), ("both", "gather"),
                                          ("both", "patch")])
@pytest.mark.parametrize("field,bn", [("b1", "bn1"), ("b2", "bn2")])
def test_edited_shifts_reach_the_skipped_channels(mode, variant, field, bn):
    """A skipped channel carries relu(b1) (after conv2: relu(b2)) into the next convolution
    (``fb.kappa1``, ``fb.kappa2``): after a compiled block's b1 or b2 is edited in place,
    or replaced, the variants that skip channels correct with the new shift, as the
    reference does with the same edit of its BN's bias (kappas kept from compile time
    gave errors of 3-22% of the logits)."""
    x = spread(3, (64, 64))  # S = 2 divides the maps of blocks 1 and 2: patch runs there
    model = tiny_model(mode)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=[variant])
    blocks = [b for _, b in model.blocks()]
    with torch.no_grad():
        cm(x)  # the derived weights built from the first kappas
        for i, replace in ((1, False), (2, True)):
            fb = cm.blocks[i].fb
            delta = torch.linspace(-1.0, 1.0, fb.width)
            if replace:
                setattr(fb, field, getattr(fb, field) + delta)
            else:
                getattr(fb, field).add_(delta)
            getattr(blocks[i], bn).bias.add_(delta)
        assert_close(cm(x), model(x))
    assert_same_masks(cm, model)
    assert [cm.blocks[i].last_run.variant for i in (1, 2)] == [variant] * 2


def test_edited_shifts_are_followed_under_inference_mode_and_in_copies():
    """The kappas made again after an edit of b1 are ordinary tensors also when the call
    runs under inference_mode (made there, they raised in every later call); a copy or a
    pickle made after an edit that no call has followed yet follows it (its tensors
    restart their versions, which could equal the ones kept); a kappa edited on its own
    keeps its values in copies, and when only the other shift changes."""
    import copy
    import io

    x = spread(3, (64, 64))
    model = tiny_model("channel")
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=["slice"])
    ref_block = [b for _, b in model.blocks()][1]
    fb = cm.blocks[1].fb
    delta = torch.linspace(-1.0, 1.0, fb.width)
    with torch.no_grad():
        fb.b1.add_(delta)
        ref_block.bn1.bias.add_(delta)
    with torch.inference_mode():
        assert_close(cm(x), model(x))
    assert not fb.kappa1.is_inference()
    with torch.no_grad():
        fb.b2.add_(delta)  # followed by a call
        ref_block.bn2.bias.add_(delta)
        cm(x)
        fb.b1.add_(delta)  # not yet: the copies follow it
        ref_block.bn1.bias.add_(delta)
        buf = io.BytesIO()
        torch.save(cm, buf)
        buf.seek(0)
        for other in (copy.deepcopy(cm), torch.load(buf, weights_only=False), cm):
            assert_close(other(x), model(x))
        fb.kappa2.add_(0.25)  # on its own
        want = cm(x)
        with pytest.raises(AssertionError, match="max error"):
            assert_close(want, model(x))  # the edit shows
        assert_close(copy.deepcopy(cm)(x), want)
        fb.b1.add_(delta)  # kappa1 follows; kappa2 keeps its edit
        assert torch.equal(fb.kappa2, torch.relu(fb.b2) + 0.25)
        cm(x)
        assert torch.equal(fb.kappa1, torch.relu(fb.b1))
        assert torch.equal(fb.kappa2, torch.relu(fb.b2) + 0.25)


def test_bare_block_and_static_dispatch():
    block = make_block(24, 8, stride=2, mode="spatial", granularity=2, seed=3)
    x = torch.randn(2, 24, 13, 11)
    laudtriton.nn.calibrate_block(block, x, 0.5)
    cm = laudtriton.compile(block, x, backend="cpu", tune="off", dispatch="static")
    with torch.no_grad():
        assert_close(cm(x), block(x))
    assert cm.blocks[0].dispatch == "static"


def _block_with_two_entries(low: str):
    """(block, spec, table): a spatial block (S = 2, batch 2 on 12x12) and a dispatch
    table running ``low`` at rate 0.2 and dense at 0.8."""
    from laudtriton.ops import BlockSpec
    from laudtriton.schedule import Choice, DispatchTable

    block = make_block(32, 8, 1, mode="spatial", granularity=2, seed=5)
    spec = BlockSpec.from_block(block, (2, 32, 12, 12))
    table = DispatchTable({0.2: Choice.make(low, {}, 1e-3, "cached"),
                           0.8: Choice.make("dense", {}, 1e-3, "cached")})
    return block, spec, table


def test_static_dispatch_runs_the_expected_rate_choice_whatever_the_rate():
    """With a table of two entries, a dynamic block runs the entry of the masks' rate
    and a static one the entry of its expected rate, whichever that is (``tune="off"``
    gives one entry, where the two cannot differ)."""
    from laudtriton.compiled_block import CompiledBlock
    from laudtriton.ops import fold_block
    from laudtriton.ops.synthetic import synthetic_masks
    from laudtriton.testing import reference_on_masks

    block, spec, table = _block_with_two_entries("gather")
    x = torch.relu(torch.randn(2, 32, 12, 12)).contiguous(memory_format=torch.channels_last)
    for rate in (0.1, 0.9):
        masks = synthetic_masks(spec, rate, seed=1)
        want = reference_on_masks(block, x, masks)
        for expected, static in ((0.2, "gather"), (0.8, "dense")):
            for dispatch, ran in (("static", static),
                                  ("dynamic", "gather" if rate < 0.5 else "dense")):
                cb = CompiledBlock("b", spec, fold_block(block), table, dispatch, expected)
                with torch.no_grad():
                    got = cb(x, masks=masks)
                assert (cb.static_choice.variant, cb.last_run.variant) == (static, ran)
                assert_close(got, want.float())


def test_a_dynamic_block_checks_each_variant_it_chooses_against_the_map_size():
    """A block in a user's module runs other map sizes than the example's, where the
    table's variants may not run (``patch``: S dividing the map); whether one runs there
    is asked per variant, so ``dense`` fitting 13x13 does not let ``patch`` run there."""
    from laudtriton.compiled_block import CompiledBlock
    from laudtriton.ops import fold_block
    from laudtriton.ops.synthetic import synthetic_masks
    from laudtriton.testing import reference_on_masks

    block, spec, table = _block_with_two_entries("patch")
    cb = CompiledBlock("b", spec, fold_block(block), table, "dynamic", 0.5)
    for hw, rate, ran in ((13, 0.9, "dense"), (13, 0.1, "dense"), (14, 0.1, "patch"),
                          (14, 0.9, "dense"), (13, 0.1, "dense")):
        x = torch.relu(torch.randn(2, 32, hw, hw)).contiguous(
            memory_format=torch.channels_last)
        masks = synthetic_masks(spec.with_(in_hw=(hw, hw)), rate, seed=1)
        with torch.no_grad():
            got = cb(x, masks=masks)
        assert cb.last_run.variant == ran, (hw, rate)
        assert_close(got, reference_on_masks(block, x, masks).float())


def test_decorator_on_factory_and_class():
    x = torch.randn(1, 3, 32, 32)

    @laudtriton.compile(example_input=x, backend="cpu", tune="off")
    def make():
        return tiny_model("layer")

    cm = make()
    assert isinstance(cm, laudtriton.CompiledModel)
    with torch.no_grad():
        assert_close(cm(x), tiny_model("layer")(x))

    class Tiny(LaudResNet):
        def __init__(self):
            super().__init__((1, 1, 1, 1), mode="channel", width_mult=0.25, input_size=32,
                             num_classes=5)

    CompiledTiny = laudtriton.compile(Tiny, x, backend="cpu", tune="off")
    # without an example input, a LaudResNet is planned on a random image of input_size
    for ct in (CompiledTiny(), laudtriton.compile(backend="cpu", tune="off")(Tiny)()):
        assert isinstance(ct, laudtriton.CompiledModel)
        assert isinstance(ct.source, Tiny) and not ct.source.training
        with torch.no_grad():  # each call built its own Tiny; .source is its eval copy
            assert_close(ct(x), ct.source(x))


def test_plan_and_stats_report_choices():
    model = tiny_model("both")
    x = torch.randn(1, 3, 32, 32)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    text = str(cm.plan)
    assert "layer1.0" in text and "both" in text
    with torch.no_grad():
        cm(x)
    assert [r.name for r in cm.last_stats] == [b.name for b in cm.blocks]
    for run, blk in zip(cm.last_stats, cm.blocks):
        masks = blk.last_masks  # the rates are those of the masks the block ran with
        assert run.spatial_rate == pytest.approx(float(masks.grid.mean()))
        assert run.channel_rate == pytest.approx(float(masks.channel.mean()))
        assert run.variant in text.split(blk.name, 1)[1].splitlines()[0]


def test_plan_gives_s_and_g_only_to_the_blocks_they_apply_to():
    """S (the patch size) is a spatial or both block's, G (the channel groups) a channel
    or both block's; the other blocks read "-" there."""
    model = LaudResNet((1, 1, 1, 1), mode="spatial-both-channel-layer", granularity="2-2-1-1",
                       channel_granularity=2, width_mult=0.25, input_size=None,
                       num_classes=7).eval()
    cm = laudtriton.compile(model, torch.randn(1, 3, 32, 32), backend="cpu", tune="off")
    rows = {line.split()[0]: line.split()[1:4] for line in str(cm.plan).splitlines()[2:]}
    assert rows == {"layer1.0": ["spatial", "2", "-"], "layer2.0": ["both", "2", "16"],
                    "layer3.0": ["channel", "-", "32"], "layer4.0": ["layer", "-", "-"]}


def test_errors():
    model = tiny_model("spatial")
    x = torch.randn(1, 3, 32, 32)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    with pytest.raises(ValueError, match=r"\[B, 3, 48, 48\] does not match the compiled plan "
                                         r"\[B, 3, 32, 32\]; compile again with an example "
                                         "input of the new size"):
        cm(torch.randn(1, 3, 48, 48))
    # no example of 4 channels would compile: the advice is the channel count
    with pytest.raises(ValueError, match=r"\[B, 4, 32, 32\] does not match the compiled plan "
                                         r"\[B, 3, 32, 32\]; the model takes 3 input channels$"):
        cm(torch.randn(1, 4, 32, 32))
    # the model's own refusal of the example names it (it named neither compile nor it)
    with pytest.raises(ValueError, match="^compile: the model refuses the example input: "
                                         "expected 3 input channels, got 1$"):
        laudtriton.compile(model, torch.randn(1, 1, 32, 32), backend="cpu", tune="off")
    from laudtriton.nn.maskers import MapTooSmall

    with pytest.raises(MapTooSmall, match="^compile: the model refuses the example input: "
                                          "granularity 2 is larger"):
        blk = model.layer2[0]
        laudtriton.compile(blk, torch.randn(1, blk.conv1.in_channels, 2, 2), backend="cpu",
                           tune="off")
    with pytest.raises(ValueError, match="input dtype torch.float64 does not match the "
                                         "compiled dtype torch.float32; cast the input or "
                                         "compile with dtype=torch.float64"):
        cm(x.double())
    with pytest.raises(ValueError, match=r"4D input .* got \(3, 32, 32\)"):
        cm(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="torch.int64 .* cast the input to torch.float32: "
                                         "a compiled model takes floating-point inputs"):
        cm(x.long())
    with pytest.raises(ValueError, match="input on meta but the model is compiled for cpu"):
        cm(torch.empty(1, 3, 32, 32, device="meta"))
    block = laudtriton.compile(model.layer1[0], torch.randn(1, 16, 8, 8), backend="cpu",
                               tune="off")
    with pytest.raises(ValueError, match="on meta but the model is compiled for cpu"):
        block(torch.empty(1, 16, 8, 8, device="meta"))
    with pytest.raises(ValueError, match="dtype torch.int64 unsupported; accepted: a floating"):
        laudtriton.compile(model, x, backend="cpu", tune="off", dtype=torch.int64)
    with pytest.raises(ValueError, match="dtype torch.float8_e4m3fn unsupported; accepted: "
                                         "a floating-point torch dtype \\(float32, "):
        # floating point to torch; was a NotImplementedError from isfinite inside compile
        laudtriton.compile(model, x, backend="cpu", tune="off", dtype=torch.float8_e4m3fn)
    with pytest.raises(RuntimeError, match="inference only"):
        cm.train()
    cm.eval()  # eval stays allowed
    with pytest.raises(ValueError, match="backend"):
        laudtriton.compile(model, x, backend="tpu")
    with pytest.raises(ValueError, match="tune"):
        laudtriton.compile(model, x, tune="fast")
    with pytest.raises(ValueError, match="dispatch"):
        laudtriton.compile(model, x, dispatch="sometimes")
    with pytest.raises(ValueError, match="unknown variant"):
        laudtriton.compile(model, x, variants=["nope"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            laudtriton.compile(model, x, backend="cuda")


class _Two(ValueError):
    def __init__(self, a, b):
        super().__init__(a, b)
        self.a = a

    def __str__(self):
        return f"{self.args[0]}/{self.args[1]}"


class _Refusing(torch.nn.Module):
    """A module with a LAUD block whose forward raises ``error``."""

    def __init__(self, error):
        super().__init__()
        self.block, self.error = make_block(8, 2, mode="spatial", granularity=2), error

    def forward(self, x):
        raise self.error


def test_a_refusal_of_the_example_keeps_its_class_and_attributes():
    """The prefix naming the example input goes into a plain one-string message; an
    exception of another shape (two arguments, its own __str__) keeps its class, its
    message and its attributes, and gets a note (rebuilding it from one string garbled
    the message or lost the class)."""
    with pytest.raises(ValueError) as e:
        laudtriton.compile(_Refusing(ValueError("bad size")), torch.randn(1, 8, 8, 8))
    assert type(e.value) is ValueError
    assert str(e.value) == "compile: the model refuses the example input: bad size"
    with pytest.raises(_Two) as e:
        laudtriton.compile(_Refusing(_Two("a", "b")), torch.randn(1, 8, 8, 8))
    assert str(e.value) == "a/b" and e.value.a == "a"
    if hasattr(e.value, "add_note"):  # Python >= 3.11
        assert e.value.__notes__ == ["compile: the model refuses the example input"]


def test_model_without_dynamic_block_warns():
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.warns(UserWarning, match="no LAUD block"):
        out = laudtriton.compile(plain, torch.randn(1, 3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(out(x), plain(x))
    with pytest.warns(UserWarning, match="copy of it on cpu in torch.float64"):
        out = laudtriton.compile(plain, torch.randn(1, 3, 8, 8), dtype=torch.float64)
    assert out[0].weight.dtype == torch.float64 and plain[0].weight.dtype == torch.float32


def test_compile_warnings_point_at_the_callers_line():
    """A warning points at the user's line, called directly or through a decorated
    factory (there it pointed at compile.py, one frame short)."""
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))

    @laudtriton.compile(example_input=torch.randn(1, 3, 8, 8))
    def build():
        return plain

    for call in (lambda: laudtriton.compile(plain, torch.randn(1, 3, 8, 8)), build):
        with pytest.warns(UserWarning, match="no LAUD block") as seen:
            call()
        assert [w.filename for w in seen] == [__file__]


def test_compiling_a_compiled_model_is_refused():
    model = tiny_model("layer")
    cm = laudtriton.compile(model, torch.randn(1, 3, 32, 32), backend="cpu", tune="off")
    with pytest.raises(ValueError, match="compiled already .*\\.source"):
        laudtriton.compile(cm, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="compiled already"):
        laudtriton.compile(torch.nn.Sequential(cm), torch.randn(1, 3, 32, 32))


def test_compile_without_example_input_leaves_the_rng_alone():
    model = tiny_model("spatial")
    model.config["input_size"] = 64
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    laudtriton.compile(model, backend="cpu", tune="off")
    assert torch.equal(torch.rand(3), want)


def test_compile_leaves_the_rng_alone_when_the_forward_draws_from_it():
    """A module whose forward draws random numbers (noise, a random crop): compile runs
    its forward twice (once to find the blocks' inputs, once to check the compiled
    module), and the caller's random numbers stay as they were (the first forward drew
    from them before)."""
    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blk = make_block(16, 4, mode="spatial", granularity=2, seed=1)

        def forward(self, x):
            return self.blk(x + 0 * torch.rand(1))

    model, x = Noisy().eval(), torch.randn(1, 16, 8, 8)
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    laudtriton.compile(model, x, backend="cpu", tune="off")
    assert torch.equal(torch.rand(3), want)


def test_compile_gives_static_dispatch_the_rate_of_the_example(tmp_path):
    """dispatch="static" runs the entry of the example's rate at every rate: with cached
    timings where gather wins below 0.5 and dense above, a block calibrated to 0.2 runs
    gather and one calibrated to 0.8 dense."""
    block, x, spec, cache = _cached_block(tmp_path)
    for b in range(11):
        fast, slow = (1e-3, 3e-3) if b < 5 else (3e-3, 1e-3)
        cache.record(spec, b / 10, {"gather": {"{}": fast}, "dense": {"{}": slow}})
    for rate, want in ((0.2, "gather"), (0.8, "dense")):
        laudtriton.nn.calibrate_block(block, x, rate)
        cm = laudtriton.compile(block, x, backend="cpu", tune="cached", cache_dir=tmp_path,
                                dispatch="static", variants=["dense", "gather"])
        assert cm.blocks[0].static_choice.variant == want
        with torch.no_grad():
            assert_close(cm(x), block(x))
        assert cm.last_stats[0].variant == want


@pytest.mark.parametrize("mode", ["spatial", "both"])
def test_editing_the_source_changes_nothing_compiled(mode):
    """``CompiledModel.source`` is documented as changing nothing in the compiled model,
    but its blocks' gates and masks check read the source's blocks' S and stride at every
    call: setting S there gave other masks and wrong outputs. The blocks now read a copy
    with its own settings and maskers (sharing the source's convolutions)."""
    model = tiny_model(mode)
    x = spread(4, (40, 40))
    calibrate_rates(model, x, 0.5)
    with torch.no_grad():
        want = model(x)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    plan = str(cm.plan)
    blk, src = cm.blocks[0], cm.source.layer1[0]
    assert blk.reference is not src and blk.reference.conv1 is src.conv1
    masker = src.masker_spatial
    src.granularity, src.dyn_mode = 1, "layer"
    src.masker_spatial = None
    cm.source.layer2[0].stride = 1
    with torch.no_grad():
        got = cm(x)
        # given masks are checked against the block as compiled (its spatial masker)
        assert torch.equal(cm(x, masks=[b.last_masks for b in cm.blocks]), got)
    assert blk.reference.masker_spatial is masker
    assert tuple(blk.last_masks.grid.shape) == (4, 1, 5, 5)  # S=2 on the 10x10 map
    assert_close(got, want)
    assert str(cm.plan) == plan


def _cached_block(tmp_path):
    """(block, x, spec, cache): a spatial block calibrated to 0.5 on x, and an empty
    autotune cache of this CPU in tmp_path (the tune="cached" tests fill it)."""
    from laudtriton.ops import BlockSpec
    from laudtriton.tune.cache import TuneCache

    block = make_block(32, 8, stride=1, mode="spatial", granularity=2, seed=5)
    x = torch.randn(1, 32, 12, 12)
    laudtriton.nn.calibrate_block(block, x, 0.5)
    return block, x, BlockSpec.from_block(block, x.shape), TuneCache(tmp_path, device="cpu")


def _calibrate_machine(tmp_path):
    """A calibration file of this CPU in tmp_path: with it, compile's predictor fills the
    buckets nothing was timed near."""
    from laudtriton.predict.calibration import Calibration, save_calibration
    from laudtriton.tune.keys import device_fingerprint

    save_calibration(Calibration(device_fingerprint("cpu"), "cpu", {"float32": 5e10}, 1e10,
                                 2e-6, 2, 2), tmp_path)


def test_cached_dispatch_predicts_only_missing_buckets(tmp_path):
    """tune="cached": cached buckets come from the cache; the predictor (on a calibrated
    machine) fills only the buckets with no measurement."""
    block, x, spec, cache = _cached_block(tmp_path)
    for b in (0.2, 0.5, 0.8):  # fake measurements in which 'patch' wins
        cache.record(spec, b, {"dense": {"{}": 3e-3}, "gather": {"{}": 2e-3},
                               "patch": {"{}": 1e-3}})
    # a bucket where only 'dense' has a current timing (the others' sources changed since)
    cache.record(spec, 0.3, {"dense": {"{}": 9e-6}})
    _calibrate_machine(tmp_path)
    cm = laudtriton.compile(block, x, backend="cpu", tune="cached", cache_dir=tmp_path)
    entries = cm.blocks[0].table.entries
    for b in (0.2, 0.5, 0.8):
        assert entries[b].source == "cached" and entries[b].variant == "patch"
    others = [b for b in entries if b not in (0.2, 0.5, 0.8)]
    assert 0.3 in others and all(entries[b].source == "predicted" for b in others)
    with torch.no_grad():
        assert_close(cm(x), block(x))


def test_cached_rates_lacking_a_variant_are_named(tmp_path, caplog, capsys):
    """Rates whose timings lack a candidate variant (``sweep --variants gather`` times
    gather and dense only) are not used, as a source edit's hidden timings are not: that
    was silent, and with nothing else cached the log said there were no cached timings.
    A warning now names the variant and the cache file (once per process: tune "quick"
    does not time the rates off its grid), and the fallback to timing on the example
    input prints a progress line saying the timings were not usable."""
    block, x, spec, cache = _cached_block(tmp_path)
    for b in (0.2, 0.5, 0.8):
        cache.record(spec, b, {"dense": {"{}": 3e-3}, "gather": {"{}": 1e-3}})
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        cm = laudtriton.compile(block, x, backend="cpu", tune="cached", cache_dir=tmp_path)
    assert str(cache.path) in caplog.text
    assert "at 3 rate(s) without patch" in caplog.text
    err = capsys.readouterr().err
    assert "no usable cached timings for " + spec.short() in err
    assert {e.source for e in cm.blocks[0].table.entries.values()} == {"measured"}
    caplog.clear()
    cache.record(spec, 0.5, {"patch": {"{}": 2e-3}})  # complete at one rate
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        cm = laudtriton.compile(block, x, backend="cpu", tune="cached", cache_dir=tmp_path)
    assert "without patch" not in caplog.text  # said once per process
    assert "no usable" not in capsys.readouterr().err
    assert cm.blocks[0].table.entries[0.5].source == "cached"


def test_cached_dispatch_predicts_no_variant_that_failed_wherever_timed(tmp_path):
    """tune="cached": a variant whose every cached timing is inf (it failed on this block
    at every rate timed) was still predicted at the buckets nothing was timed near, and
    would have failed there at run time."""
    block, x, spec, cache = _cached_block(tmp_path)
    for b in (0.2, 0.5, 0.8):
        cache.record(spec, b, {"dense": {"{}": 3e-3}, "gather": {"{}": math.inf},
                               "patch": {"{}": 2e-3}})
    _calibrate_machine(tmp_path)
    cm = laudtriton.compile(block, x, backend="cpu", tune="cached", cache_dir=tmp_path)
    entries = cm.blocks[0].table.entries
    assert {e.source for e in entries.values()} == {"cached", "predicted"}
    assert all(e.variant in ("dense", "patch") for e in entries.values()), entries


def test_cached_dispatch_predicts_a_variant_with_a_config_that_ran(tmp_path, monkeypatch):
    """A predicted entry carries the variant's best config that ran on the block, not its
    first one (which failed here wherever it was timed). (The CPU variants have one
    config: gather is given a second here, as the Triton variants have many.)"""
    import dataclasses

    from laudtriton.ops import get_variant, registry

    two = dataclasses.replace(get_variant("gather"), configs=lambda spec: [{}, {"k": 1}])
    monkeypatch.setitem(registry._REGISTRY, "gather", two)
    block, x, spec, cache = _cached_block(tmp_path)
    for b in (0.2, 0.5):
        cache.record(spec, b, {"dense": {"{}": 3e-3}, "patch": {"{}": math.inf},
                               "gather": {"{}": math.inf, '{"k": 1}': 1e-4}})
    _calibrate_machine(tmp_path)
    cm = laudtriton.compile(block, x, backend="cpu", tune="cached", cache_dir=tmp_path)
    entries = cm.blocks[0].table.entries
    predicted = [e for e in entries.values() if e.source == "predicted"]
    assert any(e.variant == "gather" for e in predicted)
    assert all(e.config_dict == {"k": 1} for e in predicted if e.variant == "gather")


def test_cached_dispatch_predicts_the_config_of_the_best_time_at_any_rate(tmp_path,
                                                                          monkeypatch):
    """The config a predicted entry carries is the one with the variant's best cached
    time on the block, at whichever rate, not the one that was fastest at the last rate
    read (which depends on the order the cache lists its rates in)."""
    import dataclasses

    from laudtriton.ops import get_variant, registry

    two = dataclasses.replace(get_variant("gather"), configs=lambda spec: [{}, {"k": 1}])
    monkeypatch.setitem(registry._REGISTRY, "gather", two)
    block, x, spec, cache = _cached_block(tmp_path)
    for b, fast in ((0.2, 1e-4), (0.5, 9e-4)):  # {} is the fastest at 0.2 only
        cache.record(spec, b, {"dense": {"{}": 3e-3}, "patch": {"{}": math.inf},
                               "gather": {"{}": fast, '{"k": 1}': 5e-4}})
    assert list(cache.rates(spec)) == [0.2, 0.5]
    _calibrate_machine(tmp_path)
    cm = laudtriton.compile(block, x, backend="cpu", tune="cached", cache_dir=tmp_path)
    predicted = [e for e in cm.blocks[0].table.entries.values() if e.source == "predicted"]
    assert any(e.variant == "gather" for e in predicted)
    assert all(e.config_dict == {} for e in predicted if e.variant == "gather")


def test_cached_configs_outside_the_variants_space_are_ignored(tmp_path, caplog):
    """A cache entry's config that its variant does not have (a hand-edited file, or
    another version's config list) reached the plan as it was, and a Triton variant then
    failed at the first forward; it is dropped with a warning naming the file, and a
    variant left with no config that ran is neither cached nor predicted."""
    block, x, spec, cache = _cached_block(tmp_path)
    for b in (0.2, 0.5):
        cache.record(spec, b, {"dense": {"{}": 3e-3}, "patch": {"{}": 2e-3},
                               "gather": {"{}": math.inf, '{"BLOCK_M": -7}': 1e-6}})
    _calibrate_machine(tmp_path)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        cm = laudtriton.compile(block, x, backend="cpu", tune="cached", cache_dir=tmp_path)
    assert str(cache.path) in caplog.text and 'gather {"BLOCK_M": -7}' in caplog.text
    entries = cm.blocks[0].table.entries
    assert entries and all(e.variant != "gather" and e.config_dict == {}
                           for e in entries.values()), entries
    assert {entries[b].source for b in (0.2, 0.5)} == {"cached"}


def test_cached_rates_are_kept_at_the_rate_they_were_timed_at(tmp_path):
    """Rates timed between buckets (a layer gate at batch 8: 0.125, 0.375; two rates in
    one bucket: 0.55 and 0.65 both round to 0.6) each keep their own entry, and a rate
    is served by the nearest timed one. Before, one timing per 0.1 bucket was kept (the
    other dropped) and 0.75, filed under 0.8, lost to a prediction at 0.7. With a
    calibration, predictions fill only the buckets no timing lies near."""
    block, x, spec, cache = _cached_block(tmp_path)
    patch = {"dense": {"{}": 3e-3}, "gather": {"{}": 2e-3}, "patch": {"{}": 1e-3}}
    gather = {"dense": {"{}": 3e-3}, "gather": {"{}": 1e-3}, "patch": {"{}": 2e-3}}
    dense = {"dense": {"{}": 1e-3}, "gather": {"{}": 2e-3}, "patch": {"{}": 3e-3}}
    for r, t in ((0.125, patch), (0.375, patch), (0.41, dense), (0.55, gather),
                 (0.65, patch), (0.75, dense)):
        cache.record(spec, r, t)
    _calibrate_machine(tmp_path)
    cm = laudtriton.compile(block, x, backend="cpu", tune="cached", cache_dir=tmp_path)
    table = cm.blocks[0].table
    cached = {r: c.variant for r, c in table.entries.items() if c.source == "cached"}
    assert cached == {0.125: "patch", 0.375: "patch", 0.41: "dense", 0.55: "gather",
                      0.65: "patch", 0.75: "dense"}
    for rate, want in ((0.12, "patch"), (0.38, "patch"), (0.4, "dense"), (0.55, "gather"),
                       (0.65, "patch"), (0.72, "dense"), (0.75, "dense")):
        assert table.choose(rate).variant == want, rate
    assert "0.125:patch(c)" in table.describe() and "0.55:gather(c)" in table.describe()
    predicted = sorted(r for r, c in table.entries.items() if c.source == "predicted")
    assert predicted == [0.0, 0.2, 0.3, 0.9, 1.0]  # the others lie within 0.05 of a timing


def test_quick_tuning_makes_an_old_clustered_entry_current_again(tmp_path):
    """An entry an old ``sweep --clustered`` wrote into the cache (hidden: clustered masks)
    stayed hidden after compile timed the same key on scattered masks (the merged meta
    kept the old flag), so every compile timed it again."""
    from laudtriton.ops import BlockSpec
    from laudtriton.tune.cache import TuneCache

    block = make_block(32, 8, mode="layer", seed=2)
    x = torch.randn(1, 32, 8, 8)
    spec = BlockSpec.from_block(block, x.shape)
    for r in (0.0, 1.0):
        TuneCache(tmp_path).record(spec, r, {"dense": {"{}": 1e-3}, "compact": {"{}": 1e-3}},
                                   {"clustered": True})
    assert TuneCache(tmp_path).rates(spec) == []
    laudtriton.compile(block, x, backend="cpu", tune="quick", cache_dir=tmp_path)
    assert TuneCache(tmp_path).rates(spec) == [0.0, 1.0]
    cm = laudtriton.compile(block, x, backend="cpu", tune="quick", cache_dir=tmp_path)
    assert {e.source for e in cm.blocks[0].table.entries.values()} == {"cached"}


def test_quick_tuning_records_the_rate_it_timed(tmp_path):
    """tune="quick" on a layer gate at batch 1: the quick rates 0.2 and 0.5 give a gate
    that is off, 0.8 one that is on. Rate 0 and rate 1 are timed once each and recorded
    at 0 and 1 (before, at 0.2, 0.5 and 0.8, rate 0's timing served rate 0.5)."""
    from laudtriton.tune.cache import TuneCache

    block = make_block(32, 8, mode="layer", seed=2)
    x = torch.randn(1, 32, 8, 8)
    cm = laudtriton.compile(block, x, backend="cpu", tune="quick", cache_dir=tmp_path)
    table = cm.blocks[0].table
    assert sorted(table.entries) == [0.0, 1.0]
    assert {c.source for c in table.entries.values()} == {"measured"}
    assert TuneCache(tmp_path, device="cpu").rates(cm.blocks[0].spec) == [0.0, 1.0]


def test_quick_tuning_times_the_examples_rate_where_no_synthetic_masks_realise_it(tmp_path):
    """One grid cell per sample (S = the 4x4 map) at batch 2, one sample on: the bucket
    0.5's synthetic masks realise 0 (round(0.5·1) per sample), so the table held rates 0
    and 1 only and the example's rate 0.5 ran the rate-0 timing's variant (a tie goes to
    the lower entry). It is timed on the example's masks now, and not cached."""
    from laudtriton.tune.cache import TuneCache

    block = make_block(32, 8, mode="spatial", granularity=4, seed=1)
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        block.masker_spatial.conv.bias.zero_()  # the gate follows the sign of the weight
        block.masker_spatial.conv.weight.zero_()
        block.masker_spatial.conv.weight[0, 0] = 1.0  # the keep logit: channel 0's mean
    x[0, 0], x[1, 0] = 1.0, -1.0
    with torch.no_grad():
        grid = block.compute_masks(x)[0].grid
    assert grid.flatten().tolist() == [1.0, 0.0]
    for _ in range(2):  # the second compile reads 0 and 1 and times 0.5 again
        cm = laudtriton.compile(block, x, backend="cpu", tune="quick", cache_dir=tmp_path)
        entries = cm.blocks[0].table.entries
        assert sorted(entries) == [0.0, 0.5, 1.0]
        assert entries[0.5].source == "measured"
    assert TuneCache(tmp_path, device="cpu").rates(cm.blocks[0].spec) == [0.0, 1.0]


def test_full_tuning_times_every_bucket(tmp_path):
    """tune="full" times the rates 0.0, 0.1, ..., 1.0 (each realised exactly by 100 cells
    of S=1 on a 10x10 map) and records them; a second compile reads them all."""
    from laudtriton.tune.cache import TuneCache

    block = make_block(32, 8, mode="spatial", granularity=1, seed=4)
    x = torch.randn(1, 32, 10, 10)
    laudtriton.nn.calibrate_block(block, x, 0.5)
    cm = laudtriton.compile(block, x, backend="cpu", tune="full", cache_dir=tmp_path)
    buckets = [i / 10 for i in range(11)]
    assert sorted(cm.blocks[0].table.entries) == buckets
    assert {c.source for c in cm.blocks[0].table.entries.values()} == {"measured"}
    assert TuneCache(tmp_path).rates(cm.blocks[0].spec) == buckets
    with torch.no_grad():
        assert_close(cm(x), block(x))
    again = laudtriton.compile(block, x, backend="cpu", tune="full", cache_dir=tmp_path)
    assert {c.source for c in again.blocks[0].table.entries.values()} == {"cached"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_compile_on_a_calibrated_cache(tmp_path, dtype):
    """The predictor models float32/16/bf16 only: a float64 compile with tune="cached" on
    a calibrated cache holding timings (of float32 blocks) times the example input
    instead of failing in the predictor (it raised "dtype 'float64' unknown"). A
    calibration measures a float32 peak only: a bfloat16 block was predicted with the
    float32 rate, unsaid; it is timed on the example input too."""
    block, x, spec, cache = _cached_block(tmp_path)
    cache.record(spec, 0.5, {"dense": {"{}": 1e-3}})
    _calibrate_machine(tmp_path)
    cm = laudtriton.compile(block, x.to(dtype), backend="cpu", tune="cached",
                            cache_dir=tmp_path, dtype=dtype)
    assert {c.source for c in cm.blocks[0].table.entries.values()} == {"measured"}
    if dtype == torch.float64:  # (half types: test_half_types_match_...)
        with torch.no_grad():
            assert_close(cm(x.double()), block.double()(x.double()))


def test_dispatch_table_keeps_rates_apart_as_the_cache_does():
    """Tables key rates to 6 decimals, as the cache keeps them: two realised rates of a
    large grid (1/30000 apart) stay two entries (at 4 decimals the later replaced the
    earlier)."""
    from laudtriton.schedule import DispatchTable, format_rate

    table = DispatchTable()
    table.add(0.5, {"dense": {"{}": 1e-3}}, "cached")
    table.add(0.500033, {"dense": {"{}": 2e-3}, "patch": {"{}": 1e-3}}, "cached")
    assert len(table.entries) == 2 and table.choose(0.50003).variant == "patch"
    assert [format_rate(r) for r in (0.5, 0.125, 0.102041)] == ["0.50", "0.125", "0.102"]


@pytest.mark.parametrize("bucket,source,says", [
    (float("nan"), "cached", "bucket nan"), (1.7, "cached", "bucket 1.7"),
    (-0.1, "cached", "bucket -0.1"), (True, "cached", "bucket True"),
    (0.5, "guessed", "source 'guessed' unknown")])
def test_dispatch_table_add_refuses_bad_rates_and_sources(bucket, source, says):
    """A NaN entry was kept and then chosen for every rate."""
    from laudtriton.schedule import DispatchTable

    table = DispatchTable()
    with pytest.raises(ValueError, match=says):
        table.add(bucket, {"gather": {"{}": 1e-4}}, source)
    table.add(0.5, {"dense": {"{}": 1e-3}}, "cached")
    assert table.choose(0.5).variant == "dense" and len(table.entries) == 1


def test_layer_blocks_in_a_model_dispatch_at_their_gate_rate():
    """A layer block inside a CompiledModel reads its table at the rate of its gate
    values (passed down from the gate it already read), which must be the rate
    ``dispatch_rate`` gives for its masks: a table that picks another variant at every
    other rate shows which rate was read."""
    from laudtriton.ops.masks import dispatch_rate
    from laudtriton.schedule import Choice, DispatchTable

    model = tiny_model("layer")
    x = torch.randn(4, 3, 45, 37)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    for blk in cm.blocks:  # compact at gate rates 1/4 and 3/4, dense at 0, 1/2 and 1
        blk.table = DispatchTable({k / 4: Choice.make("compact" if k % 2 else "dense", {},
                                                      1e-3, "measured") for k in range(5)})
        blk.rate_free = False
    used = set()
    with torch.no_grad():
        for seed in range(2):  # seed 1 gives rates 0.75 and 0.25, seed 0 only 0.5
            torch.manual_seed(seed)
            xin = torch.randn(4, 3, 45, 37)
            assert_close(cm(xin), model(xin))
            for blk in cm.blocks:
                want = blk.table.choose(dispatch_rate(blk.spec, blk.last_masks)).variant
                assert blk.last_run.variant == want
                used.add(want)
    assert used == {"compact", "dense"}


def test_dispatch_table_refuses_a_rate_outside_0_1():
    from laudtriton.schedule import DispatchTable

    table = DispatchTable()
    table.add(0.5, {"dense": {"{}": 1e-3}}, "measured")
    for bad in (float("nan"), -0.1, 1.5):
        with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
            table.choose(bad)
    table.add(0.7, {"dense": {"{}": -1.0}, "patch": {"{}": 0.0}}, "measured")
    assert 0.7 not in table.entries  # no positive time: nothing to choose


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer"])
def test_compiled_model_copies_and_saves_after_forward(mode):
    """Packed oneDNN weights cached by a forward are derived data: deepcopy and
    torch.save/load of a compiled model work after it ran, and give the same output. A
    copy starts with empty caches, so in channel mode its first calls take the paths of
    a new channel pattern (GEMMs on weights gathered for the call or dense weights with
    the masks, then sliced weights unpacked): equal up to float rounding; the third, on
    packed sliced weights, bit for bit."""
    import copy
    import io

    model = tiny_model(mode)
    x = torch.randn(3, 3, 45, 37)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    assert not cm.stem_w.requires_grad
    with torch.no_grad():
        y = cm(x)
        buf = io.BytesIO()
        torch.save(cm, buf)
        buf.seek(0)
        for clone in (copy.deepcopy(cm), torch.load(buf, weights_only=False)):
            outs = [clone(x) for _ in range(3)]
            for out in outs:
                assert_close(out, y)
            assert torch.equal(outs[-1], y)


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
def test_forward_with_given_masks(mode):
    """forward(x, masks): the blocks run with the masks given instead of their maskers'.
    With an earlier forward's own masks: the same output; with other masks: what the
    reference gives for those; a wrong count raises."""
    model = tiny_model(mode)
    x = torch.randn(2, 3, 45, 37)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    with torch.no_grad():
        y = cm(x)
        own = [b.last_masks for b in cm.blocks]
        assert torch.equal(cm(x, masks=own), y)
        cm(torch.randn(2, 3, 45, 37))
        other = [b.last_masks for b in cm.blocks]
        for (_, blk), m in zip(model.blocks(), other):  # the reference with those masks
            blk.compute_masks = lambda xin, m=m: (m, 0.0)
        assert_close(cm(x, masks=other), model(x))
        with pytest.raises(ValueError, match="masks: 1 given"):
            cm(x, masks=own[:1])


def test_compiled_block_takes_nested_kernel_configs():
    """Triton variants' configs nest ({"conv1": {...}, ...}); a dispatch table holding
    them (measured, cached or predicted) must build a CompiledBlock, rate-free when every
    entry is the same."""
    from laudtriton.compiled_block import CompiledBlock
    from laudtriton.ops import BlockSpec, fold_block
    from laudtriton.schedule import Choice, DispatchTable

    block = make_block(32, 8, stride=1, mode="spatial", granularity=2, seed=5)
    spec = BlockSpec.from_block(block, (1, 32, 12, 12))
    cfg = {"conv1": {"block_m": 32, "num_warps": 4}, "conv2": {"block_m": 64}}
    same = DispatchTable({b: Choice.make("fused", cfg, 1e-3, "cached") for b in (0.2, 0.8)})
    blk = CompiledBlock("b", spec, fold_block(block), same, "dynamic", 0.5)
    assert blk.rate_free and blk.static_choice.config_dict == cfg
    other = dict(cfg, conv2={"block_m": 32})
    mixed = DispatchTable({0.2: Choice.make("fused", cfg, 1e-3, "cached"),
                           0.8: Choice.make("fused", other, 1e-3, "cached")})
    assert not CompiledBlock("b", spec, fold_block(block), mixed, "dynamic", 0.5).rate_free


# Tiles of 32 (64 pixels for channel_gemm): the tiny model's maps and widths (12x10 and
# 16 channels in stage 1, up to 128 channels in stage 4) still end in partial tiles and
# span several, at a third of the interpreter's time of 16-wide tiles (the kernels'
# own tests, tests/kernels, run the small tiles).
TILE = dict(block_m=32, block_n=32, block_k=32, num_warps=1, num_stages=1)
TRITON_CASES = [
    ("spatial", "fused", {s: TILE for s in ("conv1", "conv2", "conv3")}),
    ("spatial", "masked", {s: TILE for s in ("conv1", "conv2", "conv3")}),
    ("channel", "channel_gemm", dict(block_p=64, block_n=32, block_k=32, num_warps=1,
                                     num_stages=1)),
]


@pytest.mark.parametrize("mode,variant,cfg", TRITON_CASES, ids=[c[1] for c in TRITON_CASES])
def test_triton_variants_inside_a_compiled_model(mode, variant, cfg):
    """The Triton variants (backend "cuda") never ran through a CompiledBlock or a
    CompiledModel in the CPU suite (compile's CPU backend never offers them); here every
    block's table holds the variant with a kernel config, run under the Triton
    interpreter on CPU tensors: logits, masks and every block's output as the
    reference's, on a batch of 3 with different masks per sample."""
    from laudtriton.schedule import Choice, DispatchTable

    model = tiny_model(mode)
    x = spread(3, (45, 37))
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=["dense"])
    for blk in cm.blocks:
        blk.table = DispatchTable({0.5: Choice.make(variant, cfg, 1e-3, "measured")})
        blk.rate_free = False
    with torch.no_grad():
        ref = model(x)
        assert_close(cm(x), ref)
    assert_same_masks(cm, model)
    assert_masks_differ_per_sample(model, mode)
    assert {r.variant for r in cm.last_stats} == {variant}
    assert_blocks_match(cm, model, x)


@pytest.mark.parametrize("calibrated", [False, True])
def test_quick_tuning_does_not_time_a_failed_rate_again(tmp_path, monkeypatch, calibrated):
    """A rate where every candidate failed is recorded (inf) and counts as tried: the next
    compile on the same cache times nothing again (it timed that rate at every compile).
    An example whose own rate is that one (calibrated) is not timed there again either."""
    import laudtriton.planning as planning  # plan_block reads its time_variants
    from laudtriton.ops.masks import dispatch_rate

    real, timed = planning.time_variants, []

    def failing_at_half(fb, spec, x, masks, cands, **kw):
        rate = float(dispatch_rate(spec, masks))
        timed[-1].append(rate)
        if abs(rate - 0.5) < 0.05:
            return {c.name: {"{}": float("inf")} for c in cands}
        return real(fb, spec, x, masks, cands, **kw)

    monkeypatch.setattr(planning, "time_variants", failing_at_half)
    block = make_block(16, 4, mode="spatial", granularity=2, seed=3)
    x = torch.randn(1, 16, 8, 8)
    if calibrated:
        laudtriton.nn.calibrate_block(block, x, 0.5)
    for _ in range(2):
        timed.append([])
        cm = laudtriton.compile(block, x, backend="cpu", tune="quick", cache_dir=tmp_path)
    assert sum(abs(r - 0.5) < 0.05 for r in timed[0]) == 1, timed
    assert timed[1] == [], timed
    assert not any(abs(r - 0.5) < 0.05 for r in cm.blocks[0].table.entries)


def test_quick_tuning_does_not_time_a_failed_layer_rate_twice(tmp_path, monkeypatch):
    """A layer gate at batch 1: buckets 0.2 and 0.5 both realise rate 0. When every
    candidate fails there, rate 0 is timed once in the first compile and not at all in
    the next (the check compared buckets, not realised rates: twice each time)."""
    import laudtriton.planning as planning  # plan_block reads its time_variants
    from laudtriton.ops.masks import dispatch_rate

    real, timed = planning.time_variants, []

    def failing_at_zero(fb, spec, x, masks, cands, **kw):
        rate = float(dispatch_rate(spec, masks))
        timed[-1].append(rate)
        if rate == 0.0:
            return {c.name: {"{}": float("inf")} for c in cands}
        return real(fb, spec, x, masks, cands, **kw)

    monkeypatch.setattr(planning, "time_variants", failing_at_zero)
    block = make_block(32, 8, mode="layer", seed=2)
    x = torch.randn(1, 32, 8, 8)
    for _ in range(2):
        timed.append([])
        laudtriton.compile(block, x, backend="cpu", tune="quick", cache_dir=tmp_path)
    assert timed == [[0.0, 1.0], []], timed


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
@settings(max_examples=8, deadline=None, derandomize=True)
@given(pick=st.integers(0, 2), s1=st.integers(1, 4), s2=st.integers(1, 3),
       s3=st.integers(1, 2), h=st.integers(32, 48), w=st.integers(32, 48),
       batch=st.integers(1, 3), rate=st.floats(0.2, 0.8), seed=st.integers(0, 2**16))
def test_property_random_models_and_inputs(mode, pick, s1, s2, s3, h, w, batch, rate, seed):
    """A random tiny LAUD network (mode, S per stage, map size, batch, rate) with one CPU
    variant forced: the compiled logits and every block's masks are the reference's.
    Every mode gets its own examples (30 drawn over the four modes held no channel
    mode), at rates strictly inside (0, 1) (0 and 1 are the matrix tests')."""
    variant = CPU_VARIANTS[mode][pick % len(CPU_VARIANTS[mode])]
    if variant == "patch":  # some block must have S x S cells that tile its map
        s1, h, w = 2, 8 * (h // 8), 8 * (w // 8)
    model = tiny_model(mode, granularity=f"{s1}-{s2}-{s3}-1", seed=seed)
    x = spread(batch, (h, w), seed=seed)
    calibrate_rates(model, x, rate)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=[variant])
    with torch.no_grad():
        assert_close(cm(x), model(x), name=f"{mode} {variant}")
    assert_same_masks(cm, model)


def test_tuning_shows_progress_on_stderr(tmp_path, capsys):
    """tune="quick"/"full" with nothing cached times every distinct block for minutes
    on a CPU, and "off" times every one on the example input: one line per block it
    times, on stderr (both were silent); none when the cache holds them, or where a block
    has one candidate variant (nothing to time)."""
    model = tiny_model("spatial")
    x = torch.randn(1, 3, 32, 32)
    laudtriton.compile(model, x, backend="cpu", tune="quick", cache_dir=tmp_path)
    lines = capsys.readouterr().err.splitlines()
    n = len({b.spec for b in laudtriton.compile(model, x, backend="cpu", tune="off").blocks})
    off = capsys.readouterr().err.splitlines()
    for said in (lines, off):
        assert len(said) == n and all(ln.startswith("laudtriton.compile: block ")
                                      for ln in said)
        assert said[0].startswith(f"laudtriton.compile: block 1/{n}: timing ")
    assert off[0].endswith("variant(s) on the example input")
    laudtriton.compile(model, x, backend="cpu", tune="quick", cache_dir=tmp_path)
    laudtriton.compile(model, x, backend="cpu", tune="off", variants=["dense"])
    laudtriton.compile(model, x, backend="cpu", tune="off", progress=False)  # asked
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="progress must be True or False, got 'no'"):
        laudtriton.compile(model, x, backend="cpu", progress="no")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode,variant", CASES)
def test_half_types_match_the_dense_variants_on_the_same_masks(dtype, mode, variant):
    """Compiled in float16 or bfloat16 on CPU, each variant's logits stay within the
    half-type bound (``testing.TOLERANCE``: four units of roundoff of the type) of the
    same network compiled with every block ``dense`` and run on the compiled model's own
    masks: no gate decides there, so the two differ by rounding alone (against the
    float32 reference a gate near a tie may decide otherwise: README). Measured worst
    over three seeds: 1.2e-3 in float16 and 8.5e-3 in bfloat16 ("both", "slice").

    Both are also held to the network compiled in float32 on those masks, within eight
    units of roundoff: the half-type network rounds every layer's output, and measured
    up to 4.3 units (``dense``, four modes, three seeds; session 34). Without it the
    ``dense`` cases compared dense with itself, and an error shared by every half-type
    path (e.g. a bias folded in half precision) went unseen."""
    from laudtriton.testing import TOLERANCE

    model = tiny_model(mode)
    x = spread(3, (45, 37))
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", dtype=dtype,
                            variants=[variant])
    plain = laudtriton.compile(model, x, backend="cpu", tune="off", dtype=dtype,
                               variants=["dense"])
    full = laudtriton.compile(model, x, backend="cpu", tune="off", variants=["dense"])
    xc = x.to(dtype)
    with torch.no_grad():
        out = cm(xc)
        masks = [b.last_masks for b in cm.blocks]
        same = plain(xc, masks=masks, check_masks=False)
        exact = full(x, masks=masks, check_masks=False)
    assert out.dtype == dtype
    if variant != "dense":  # the variant ran (dense with dense would compare nothing)
        assert variant in {r.variant for r in cm.last_stats}
        assert_close(out.float(), same.float(), TOLERANCE[dtype], f"{mode} {variant} {dtype}")
    per_layer_rounding = 2  # TOLERANCE's four units twice: eight, for 4.3 measured
    for got, who in ((out, variant), (same, "dense")):
        assert_close(got.float(), exact, per_layer_rounding * TOLERANCE[dtype],
                     f"{mode} {who} {dtype} against float32")


def test_plans_of_half_type_models_are_read_at_the_exact_rate():
    """Compile's tuning (and so ``dispatch="static"``, ``"off"`` and ``"quick"``) read the
    example's rate as the mask's own mean in bfloat16 (0.300781 for 0.3), while a forward
    reads it in float64: a static model could run the upper entry's variant where the
    dynamic one ran the lower's, and the plan printed 0.301 where last_stats said 0.3."""
    from laudtriton.capture import block_inputs
    from laudtriton.schedule import mean64, rate_key

    dt = torch.bfloat16
    model = tiny_model("spatial")
    x = spread(5, (32, 32))
    calibrate_rates(model, x, 0.3)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", dtype=dt,
                            dispatch="static")
    captured, _ = block_inputs(model.to(dt), x.to(dt))  # compile worked on a copy
    rounded = 0
    for (name, block, xin), cb in zip(captured, cm.blocks):
        with torch.no_grad():
            grid = block.compute_masks(xin)[0].grid
        assert grid.dtype == dt
        rounded += float(grid.mean()) != mean64(grid)  # the case this test is about
        assert list(cb.table.entries) == [rate_key(mean64(grid))], name
    assert rounded > 0
    with torch.no_grad():
        cm(x.to(dt))
    for run, cb in zip(cm.last_stats, cm.blocks):
        assert rate_key(run.spatial_rate) in cb.table.entries


def test_dispatch_rate_of_half_type_masks_is_exact():
    """A bfloat16 mask's own mean is rounded (0.55 read 0.5498): the same masks ran
    another variant than in float32 at a rate halfway between two table entries, and
    last_stats reported float32 means (0.8 as 0.800000011920929)."""
    from laudtriton.nn.block import BlockMasks
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.schedule import mean64, run_rate

    grid = torch.zeros(1, 1, 4, 5)
    grid.view(-1)[:11] = 1  # 11 of 20 cells: 0.55
    for dt in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        assert mean64(grid.to(dt)) == 0.55
    spec = BlockSpec(16, 4, 16, 1, False, (8, 10), "spatial", 2)  # the grid's rate
    assert run_rate(spec, BlockMasks(grid.bfloat16(), None, None, None)) == 0.55
    x = spread(1, (32, 32))
    model = tiny_model("spatial")
    calibrate_rates(model, x, 0.8)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    with torch.no_grad():
        cm(x)
    for run, blk in zip(cm.last_stats, model.blocks()):
        assert run.spatial_rate == float(blk[1].last_masks.grid.double().mean())


def test_plan_names_the_variant_static_dispatch_runs():
    model = tiny_model("spatial")
    x = spread(1, (32, 32))
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", dispatch="static")
    text = str(cm.plan)
    for b in cm.blocks:
        assert f"[static: {b.static_choice.variant} at every rate]" in text
    with torch.no_grad():
        cm(x)
    assert [r.variant for r in cm.last_stats] == [b.static_choice.variant for b in cm.blocks]


def test_fill_predictions_returns_only_what_it_filled():
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.predict import model as pmodel
    from laudtriton.predict.hardware import get_hardware
    from laudtriton.schedule import DispatchTable, fill_predictions

    spec = BlockSpec(16, 4, 16, 1, False, (8, 10), "spatial", 2)
    hw = get_hardware("v100")
    assert fill_predictions(DispatchTable(), spec, [0.5], ["dense", "gather"], hw) == [0.5]
    real = pmodel.predict_timings
    try:  # no usable predicted time: nothing added, nothing reported filled
        pmodel.predict_timings = lambda *a, **k: {v.name: {"{}": float("inf")}
                                                  for v in a[2]}
        table = DispatchTable()
        assert fill_predictions(table, spec, [0.5], ["dense", "gather"], hw) == []
        assert not table.entries
    finally:
        pmodel.predict_timings = real


def test_concurrent_calls_take_turns(monkeypatch):
    """Threads calling one compiled model (or one of its blocks) run one forward at a time:
    the per-block caches and last_* are updated by every call, and racing calls lost the
    slice cache's byte count or raised KeyError. Outputs are the sequential ones."""
    import threading

    from laudtriton.compiled_block import CompiledBlock

    model = tiny_model("channel")
    x = [spread(2, (32, 32), seed=s) for s in range(3)]
    calibrate_rates(model, x[0], 0.5)
    cm = laudtriton.compile(model, x[0], backend="cpu", tune="off")
    with torch.no_grad():
        want = [cm(xi) for xi in x]
    inside, most, waited = {}, [0], [False]  # per block: a block's state is its own
    seen = threading.Condition()
    real = CompiledBlock._run

    def slow_run(self, *args, **kwargs):
        with seen:
            inside[self.name] = inside.get(self.name, 0) + 1
            most[0] = max(most[0], inside[self.name])
            seen.notify_all()
            if not waited[0]:  # the first run waits for a second one to enter: without
                waited[0] = True  # the locks one does, as the other threads are started
                seen.wait_for(lambda: inside[self.name] > 1, timeout=1.0)
        try:
            return real(self, *args, **kwargs)
        finally:
            with seen:
                inside[self.name] -= 1

    monkeypatch.setattr(CompiledBlock, "_run", slow_run)
    got, errors = {}, []

    def serve(i):
        try:
            with torch.no_grad():
                for _ in range(2):
                    got[i] = cm(x[i])
                blk = cm.blocks[0]  # a block called on its own takes turns too
                blk(torch.rand(2, blk.spec.in_channels, *blk.spec.in_hw).contiguous(
                    memory_format=torch.channels_last))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert most[0] == 1  # never two runs of one block at once
    for i in range(3):  # within rounding: a block called meanwhile shares the CPU
        assert_close(got[i], want[i])  # threads, and a convolution's split may differ
