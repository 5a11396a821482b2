"""The cluttered-digits example (examples/cluttered_digits.py): data, a few training
steps on a tiny subset (the loss falls, the FLOPs ratio moves toward the target), and
reference == compiled on the trained model. Tiny shapes: runs in seconds on CPU."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="the digits example needs scikit-learn")

_PATH = Path(__file__).resolve().parents[1] / "examples" / "cluttered_digits.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("cluttered_digits", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cluttered_digits"] = mod
    spec.loader.exec_module(mod)
    return mod


cd = _load_example()

# A small version of the example's model and data: 32x32 canvases (maps 8, 4, 2, 1).
TINY = replace(cd.Config(), canvas=32, digit_size=12, fragments=3, width_mult=0.125,
               depths=(1, 1, 1, 1), granularity="2-2-1-1", batch_size=16, epochs=10,
               lr=1e-2, target_rate=0.3, warmup_epochs=0)


def test_split_is_fixed_and_disjoint():
    a = cd.load_split(seed=0)
    b = cd.load_split(seed=0)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    tr_x, tr_y, te_x, te_y = a
    assert tr_x.shape[1:] == (8, 8) and te_x.shape[1:] == (8, 8)
    assert len(tr_y) + len(te_y) == 1797 and len(te_y) == 359
    assert float(tr_x.max()) == 1.0 and float(tr_x.min()) == 0.0
    c = cd.load_split(seed=1)
    assert not torch.equal(c[3], te_y)


@pytest.mark.parametrize("canvas,digit,fragments", [(64, 24, 5), (37, 13, 0), (20, 20, 2)])
def test_render_places_the_digit(canvas, digit, fragments):
    tr_x, _, _, _ = cd.load_split()
    digits = tr_x[:7]
    g = torch.Generator().manual_seed(3)
    img, pos = cd.render(digits, g, canvas, digit, fragments, noise=0.0)
    assert img.shape == (7, 1, canvas, canvas) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert int(pos.min()) >= 0 and int(pos.max()) <= canvas - digit
    big = torch.nn.functional.interpolate(digits[:, None], size=(digit, digit),
                                          mode="bilinear", align_corners=False).clamp(0, 1)
    for i in range(7):
        y, x = pos[i].tolist()
        window = img[i, 0, y:y + digit, x:x + digit]
        # the digit is drawn over the clutter (pixelwise max): never darker than the digit
        assert bool((window >= big[i, 0] - 1e-6).all())
        if fragments == 0:  # without clutter or noise, nothing outside the digit
            assert float(img[i].sum()) == pytest.approx(float(big[i].sum()), rel=1e-5)


def test_render_rejects_a_digit_larger_than_the_canvas():
    with pytest.raises(ValueError, match="digit_size 40 is larger than the canvas 32"):
        cd.render(torch.zeros(1, 8, 8), torch.Generator(), canvas=32, digit_size=40)


def test_temperature_schedule():
    cfg = replace(TINY, tau_start=5.0, tau_end=0.5)
    assert cd.temperature(0.0, cfg) == pytest.approx(5.0)
    assert cd.temperature(1.0, cfg) == pytest.approx(0.5)
    assert cd.temperature(0.5, cfg) == pytest.approx(5.0 * 0.1 ** 0.5)
    assert cd.temperature(2.0, cfg) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def trained():
    """TINY model after 40 steps on 64 training digits."""
    tr_x, tr_y, te_x, te_y = cd.load_split()
    model = cd.build_model(TINY)
    history = cd.train(model, tr_x[:64], tr_y[:64], TINY, log=lambda s: None, max_steps=40)
    return model, history, te_x[:48], te_y[:48]


def test_training_lowers_the_loss_and_moves_the_rate_to_the_target(trained):
    _, history, _, _ = trained
    assert len(history) == 40
    first, last = history[:6], history[-6:]
    loss0, loss1 = (np.mean([r["loss"] for r in h]) for h in (first, last))
    assert loss1 < 0.9 * loss0, (loss0, loss1)
    # the masker starts dense (FLOPs ratio ~1); it must come closer to the target
    f0, f1 = (np.mean([r["flops_ratio"] for r in h]) for h in (first, last))
    assert f0 > 0.9
    assert abs(f1 - TINY.target_rate) < 0.75 * abs(f0 - TINY.target_rate), (f0, f1)


def test_compiled_matches_reference_after_training(trained):
    import laudtriton

    model, _, te_x, te_y = trained
    x, _ = cd.render(te_x, torch.Generator().manual_seed(5), TINY.canvas, TINY.digit_size,
                     TINY.fragments, TINY.noise)
    from laudtriton.testing import assert_close, assert_same_masks

    ref = cd.evaluate(model, x, te_y, batch=16)
    assert 0.0 <= ref["rate"] <= 1.0 and len(ref["block_rates"]) == 4
    with torch.no_grad():
        model(x)  # the whole batch's masks, for assert_same_masks
    # the timer's choice (dense where the masks are nearly full), then gather forced: the
    # trained maskers leave some block partly on, where the sparse path must compute
    for variants in (None, ["gather"]):
        cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=variants)
        with torch.no_grad():
            out = cm(x)
        assert_close(out, ref["logits"], 1e-4)
        assert_same_masks(cm, model)
    assert any(r.variant == "gather" and 0 < r.spatial_rate < 1 for r in cm.last_stats), \
        cm.last_stats


def test_main_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cd.main(["--epochs", "0"])
    assert "--epochs must be positive, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cd.main(["--target-rate", "1.5"])
    assert "--target-rate must be in (0, 1], got 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("args, says", [
    (["--out", "{file}"], "--out '{file}' cannot be made or written (File exists)"),
    (["--save", "{tmp}/missing/m.pt"], "the directory '{tmp}/missing' does not exist"),
    (["--save", "{tmp}"], "is a directory; give a file name"),
    (["--seed", str(2**64)], "--seed must be in [0, 2**32)"),
    (["--out", ""], "--out '' is empty; give a path"),  # was '.': the current directory
    (["--save", ""], "--save '' is empty; give a path"),  # said "'.' is a directory"
    (["--save", "{tmp}/models/"], "names a directory"),  # a Path dropped the slash
])
def test_main_refuses_paths_and_seeds_before_training(args, says, tmp_path, capsys,
                                                      monkeypatch):
    """These were tracebacks, --save's after the whole training (about 5 minutes)."""
    monkeypatch.setattr(cd, "train", lambda *a: pytest.fail("trained before refusing"))
    (tmp_path / "f").write_text("")
    fill = {"file": str(tmp_path / "f"), "tmp": str(tmp_path)}
    with pytest.raises(SystemExit) as e:
        cd.main(["--quick", "--out", str(tmp_path / "o"),
                 *[a.format(**fill) for a in args]])
    assert e.value.code == 2 and says.format(**fill) in capsys.readouterr().err


def test_quick_prints_the_warm_up_it_runs(tmp_path):
    """--quick printed warmup_epochs=4 and ran 1 (the warm-up leaves the sparsity loss an
    epoch)."""
    cfg, *_ = cd.parse_args(["--quick", "--out", str(tmp_path / "o")])
    assert (cfg.epochs, cfg.warmup_epochs) == (2, 1)
