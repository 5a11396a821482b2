"""End to end: train a LAUD-ResNet on cluttered handwritten digits, compile it for this CPU,
and show where it skips work.

Data: scikit-learn's 8x8 ``load_digits`` (1797 images, no download), each digit upscaled
to 24x24 and placed at a random position on a 64x64 canvas with clutter (fragments cut
from other digits and low-amplitude noise). Fixed split: 1438 train / 359 test images;
training canvases are drawn anew every epoch, test canvases once (seeded).

Model: ``LaudResNet((2, 2, 1, 1), mode="spatial", granularity="2-2-1-1", width_mult=1.0)``
(feature maps 16, 8, 4, 2). S = 2 in the first two stages: a digit covers about 6x6
pixels of the 16x16 stage-1 map, i.e. 3x3 to 4x4 cells of the 8x8 mask grid, so the
masks can follow it and skip the rest; S = 1 on the 4x4 and 2x2 maps (the finest grid).
S was chosen by hand: ``laudtriton design`` only describes laud_resnet50/101 at 3 input
channels. Width 1.0, not less: the block's dense memory traffic (identity, output) does
not shrink with the rate, its compute does, and compute grows faster with the width
(measured with one thread, batch 359: 1.17x at width 0.5, 1.27x at width 1.0, at
the same FLOPs target 0.4).

Training: 4 epochs of cross-entropy alone (masks learnt on random features collapse and
the network then stays at chance), then cross-entropy + 10 x ``SparsityLoss`` on the
FLOPs ratio; Gumbel temperature decayed exponentially, AdamW with a cosine learning rate.
Then the reference model (eval) and ``laudtriton.compile(..., backend="cpu")`` are
evaluated on the test set, timed against the same network run dense (the faster of its
two forms, ``laudtriton.baseline.dense_forms``, both timed in the same run) on the whole
test set (batch 359), and two figures
are written: the learned masks over test images, and latency vs activation rate.

    python examples/cluttered_digits.py --out docs/figures
    python examples/cluttered_digits.py --quick --out /tmp/digits   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import laudtriton
from laudtriton.baseline import dense_forms, time_against_dense
from laudtriton.nn import LaudResNet, SparsityLoss, calibrate_rates
from laudtriton.tune.atomic import write_bytes_atomic
from laudtriton.tune.numbers import ascii_float, ascii_int
from laudtriton.tune.paths import check_nonempty, check_output_path, make_writable_dir


@dataclass(frozen=True)
class Config:
    """Every knob of the example (the defaults are the documented run)."""

    epochs: int = 16
    seed: int = 0
    target_rate: float = 0.3  # target FLOPs ratio of SparsityLoss
    batch_size: int = 32
    lr: float = 2e-3
    sparsity_weight: float = 10.0
    warmup_epochs: int = 4  # cross-entropy only first: masks learnt on random features collapse
    tau_start: float = 5.0  # Gumbel temperature, decayed exponentially per step
    tau_end: float = 0.5
    canvas: int = 64
    digit_size: int = 24
    fragments: int = 5  # clutter: fragments of other digits per canvas
    noise: float = 0.1  # clutter: amplitude of uniform noise
    depths: tuple[int, int, int, int] = (2, 2, 1, 1)
    granularity: str = "2-2-1-1"
    width_mult: float = 1.0
    train_limit: int | None = None  # use only the first N training images
    test_limit: int | None = None  # use only the first N test images
    timing_reps: int = 15
    curve_rates: tuple[float, ...] = (0.1, 0.25, 0.4, 0.6, 1.0)


# -- data ------------------------------------------------------------------------------

def load_split(seed: int = 0, test_fraction: float = 0.2):
    """The digits, split once: (train [N,8,8] float in [0,1], train labels [N] int64,
    test [M,8,8], test labels [M]). The split depends only on ``seed``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    test, train = perm[:n_test], perm[n_test:]
    return images[train], labels[train], images[test], labels[test]


def render(digits: torch.Tensor, generator: torch.Generator, canvas: int = 64,
           digit_size: int = 24, fragments: int = 5, noise: float = 0.1):
    """Place each digit at a random position on a cluttered canvas.

    digits: [N, 8, 8] in [0, 1]. Clutter: ``fragments`` crops (digit_size/3 square, 0.7
    amplitude) of other digits of the batch at random places, then uniform noise in
    [0, noise]. Returns (images [N, 1, canvas, canvas] float32 in [0, 1], the digits'
    top-left corners [N, 2] int64).
    """
    if digit_size > canvas:
        raise ValueError(f"digit_size {digit_size} is larger than the canvas {canvas}")
    n = digits.shape[0]
    big = F.interpolate(digits[:, None], size=(digit_size, digit_size), mode="bilinear",
                        align_corners=False).clamp_(0, 1)[:, 0]
    out = torch.zeros(n, canvas, canvas)
    span = canvas - digit_size + 1
    pos = torch.randint(0, span, (n, 2), generator=generator)
    f = max(digit_size // 3, 1)
    src = torch.randint(0, n, (n, fragments), generator=generator)
    crop = torch.randint(0, digit_size - f + 1, (n, fragments, 2), generator=generator)
    place = torch.randint(0, canvas - f + 1, (n, fragments, 2), generator=generator)
    for i in range(n):
        for k in range(fragments):
            (cy, cx), (py, px) = crop[i, k].tolist(), place[i, k].tolist()
            piece = big[src[i, k], cy:cy + f, cx:cx + f] * 0.7
            region = out[i, py:py + f, px:px + f]
            torch.maximum(region, piece, out=region)
        y, x = pos[i].tolist()
        region = out[i, y:y + digit_size, x:x + digit_size]
        torch.maximum(region, big[i], out=region)
    out += noise * torch.rand(out.shape, generator=generator)
    return out.clamp_(0, 1)[:, None], pos


# -- model and training ----------------------------------------------------------------

def build_model(cfg: Config) -> LaudResNet:
    """The small spatial LAUD-ResNet of the example (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return LaudResNet(cfg.depths, mode="spatial", granularity=cfg.granularity,
                      num_classes=10, input_size=cfg.canvas, in_channels=1,
                      width_mult=cfg.width_mult)


def temperature(progress: float, cfg: Config) -> float:
    """Gumbel temperature at training ``progress`` in [0, 1]: tau_start -> tau_end."""
    p = min(max(progress, 0.0), 1.0)
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** p


def train_step(model: LaudResNet, opt: torch.optim.Optimizer, crit: SparsityLoss,
               x: torch.Tensor, y: torch.Tensor, epoch: float, weight: float) -> dict:
    """One optimisation step on x [B, 1, H, W], y [B]; returns the step's numbers."""
    model.train()
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    sparsity = crit(model.last_stats, epoch)
    loss = ce + weight * sparsity
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    stats = model.last_stats
    rate = torch.stack([b.rate3.detach() for b in stats.blocks]).mean()
    return {"loss": loss.item(), "ce": ce.item(), "sparsity": sparsity.item(),
            "flops_ratio": float(stats.flops_ratio.detach()), "rate": float(rate)}


def train(model: LaudResNet, train_x: torch.Tensor, train_y: torch.Tensor, cfg: Config,
          log=print, max_steps: int | None = None) -> list[dict]:
    """Train on digits train_x [N, 8, 8] (re-rendered each epoch), labels [N].

    Returns one dict per step (loss, ce, sparsity, flops_ratio, rate, epoch, seconds).
    ``max_steps`` stops early (tests).
    """
    g = torch.Generator().manual_seed(cfg.seed + 1)
    steps_per_epoch = math.ceil(len(train_y) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if max_steps is None else max_steps
    warmup = min(cfg.warmup_epochs, cfg.epochs - 1)
    crit = SparsityLoss(cfg.target_rate, cfg.epochs - warmup)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(total, 1), 1.0))))
    history, step, t0 = [], 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        x_all, _ = render(train_x, g, cfg.canvas, cfg.digit_size, cfg.fragments, cfg.noise)
        order = torch.randperm(len(train_y), generator=g)
        for i in range(steps_per_epoch):
            if step >= total:
                return history
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            model.set_temperature(temperature(step / max(total - 1, 1), cfg))
            sparse_epoch = epoch - warmup + i / steps_per_epoch
            rec = train_step(model, opt, crit, x_all[idx], train_y[idx], max(sparse_epoch, 0),
                             cfg.sparsity_weight if sparse_epoch >= 0 else 0.0)
            sched.step()
            step += 1
            rec.update(epoch=epoch, seconds=time.perf_counter() - t0)
            history.append(rec)
        last = history[-steps_per_epoch:]
        log(f"epoch {epoch + 1:>2}/{cfg.epochs}  loss {np.mean([r['loss'] for r in last]):.3f}"
            f"  ce {np.mean([r['ce'] for r in last]):.3f}"
            f"  flops {np.mean([r['flops_ratio'] for r in last]):.3f}"
            f"  rate {np.mean([r['rate'] for r in last]):.3f}"
            f"  {history[-1]['seconds']:.0f} s")
    return history


def save_state(model: LaudResNet, path: Path) -> None:
    """Write ``model.state_dict()`` to ``path`` (torch.save) atomically
    (``tune.atomic.write_bytes_atomic``: a temp file beside it, beside the file a symbolic
    link points to, the link kept, then ``os.replace``). A failed or interrupted save
    leaves the old file whole and no temp file (it wrote straight into the path: half a
    file, the old model lost)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_bytes_atomic(path, buf.getvalue())


# -- evaluation ------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: LaudResNet, x: torch.Tensor, y: torch.Tensor, batch: int = 128) -> dict:
    """Reference model in eval on x [N, 1, H, W]: accuracy, mean spatial rate (mask grid
    cells, mean over blocks and images), FLOPs ratio, per-block rates, logits."""
    model.eval()
    logits, rates, flops = [], [], []
    for i in range(0, len(y), batch):
        xb = x[i:i + batch]
        logits.append(model(xb))
        st = model.last_stats
        rates.append(torch.stack([b.rate3 for b in st.blocks]) * len(xb))
        flops.append(float(st.flops_ratio) * len(xb))
    logits = torch.cat(logits)
    per_block = torch.stack(rates).sum(0) / len(y)
    return {"accuracy": float((logits.argmax(1) == y).float().mean()),
            "rate": float(per_block.mean()), "block_rates": per_block.tolist(),
            "flops_ratio": sum(flops) / len(y), "logits": logits}


@torch.no_grad()
def time_dense_vs_compiled(model: LaudResNet, compiled, x: torch.Tensor, reps: int = 15):
    """(dense seconds, compiled seconds, dense memory format): interleaved medians on x,
    dense the faster of its two forms in the same run."""
    fmt, t_dense, (t_comp,) = time_against_dense(
        {n: lambda m=m: m(x) for n, m in dense_forms(model).items()},
        [lambda: compiled(x)], warmup=2, reps=reps)
    return t_dense, t_comp, fmt


def latency_curve(model: LaudResNet, x: torch.Tensor, rates, reps: int = 10, log=print):
    """Latency vs rate of this model: for each rate, a copy with its maskers calibrated
    to that rate on x, compiled and timed against dense. Returns rows (rate, achieved
    mean rate, dense s, compiled s)."""
    rows = []
    for r in rates:
        m = copy.deepcopy(model).eval()
        achieved = float(np.mean(calibrate_rates(m, x, r)))
        # quiet: the log line below says each rate's result
        cm = laudtriton.compile(m, x, backend="cpu", tune="off", progress=False)
        td, tc, _ = time_dense_vs_compiled(m, cm, x, reps)
        log(f"  rate {r:.2f} (achieved {achieved:.2f}): dense {td * 1e3:.1f} ms, "
            f"compiled {tc * 1e3:.1f} ms, speedup {td / tc:.2f} x")
        rows.append((r, achieved, td, tc))
    return rows


# -- figures ---------------------------------------------------------------------------

def plot_masks(model: LaudResNet, x: torch.Tensor, y: torch.Tensor, path: Path,
               n: int = 8) -> None:
    """Test images with the learned masks of the first two stages overlaid."""
    from matplotlib.figure import Figure

    model.eval()
    with torch.no_grad():
        pred = model(x[:n]).argmax(1)
    blocks = [(name, b) for name, b in model.blocks() if name.endswith(".0")][:2]
    fig = Figure(figsize=(1.6 * n, 1.7 * (len(blocks) + 1)), dpi=110)
    axes = fig.subplots(len(blocks) + 1, n, squeeze=False)
    size = x.shape[-1]
    for j in range(n):
        img = x[j, 0].numpy()
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(f"{int(y[j])} -> {int(pred[j])}", fontsize=8)
        for i, (name, blk) in enumerate(blocks, start=1):
            grid = blk.last_masks.grid[j:j + 1]
            up = F.interpolate(grid, size=(size, size), mode="nearest")[0, 0].numpy()
            axes[i, j].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[i, j].imshow(np.ma.masked_where(up > 0.5, up), cmap="Greys", vmin=-1,
                              vmax=0.2, alpha=0.65)
            axes[i, j].contour(up, levels=[0.5], colors="tab:red", linewidths=0.8)
            if j == 0:
                axes[i, j].set_ylabel(f"{name}\nS={blk.granularity}", fontsize=8)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=8)
    fig.suptitle("computed cells (inside red) vs skipped (shaded)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def plot_latency(rows, trained: tuple[float, float, float], batch: int, path: Path) -> None:
    """Latency vs mean activation rate: dense line, compiled (calibrated) line, and the
    trained model's own point. trained = (mean rate, dense s, compiled s)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.6), dpi=110)
    ax = fig.subplots()
    ach = [r[1] for r in rows]
    ax.plot(ach, [r[2] * 1e3 for r in rows], "s-", color="black", label="dense")
    ax.plot(ach, [r[3] * 1e3 for r in rows], "o-", color="tab:blue",
            label="compiled (maskers calibrated to the rate)")
    ax.plot([trained[0]], [trained[2] * 1e3], "*", color="tab:red", ms=12,
            label=f"compiled, trained masks ({trained[1] / trained[2]:.2f}x)")
    ax.set_xlabel("mean activation rate (mask cells)")
    ax.set_ylabel(f"latency, batch {batch} [ms]")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


# -- main ------------------------------------------------------------------------------

def parse_args(argv=None) -> tuple[Config, Path, bool, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="digits_out", help="figure directory")
    p.add_argument("--epochs", type=ascii_int, default=Config.epochs)
    p.add_argument("--seed", type=ascii_int, default=Config.seed)
    p.add_argument("--target-rate", type=ascii_float, default=Config.target_rate,
                   help="target FLOPs ratio of the sparsity loss (0.3 to 0.5 is sensible)")
    p.add_argument("--digit-size", type=ascii_int, default=Config.digit_size,
                   help="side of the upscaled digit on the canvas, in pixels")
    p.add_argument("--save", default=None,
                   help="write the trained model's state_dict here (torch.save, "
                        "atomically: an old file is replaced whole)")
    p.add_argument("--threads", type=ascii_int, default=None,
                   help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: at most 2 epochs (1 of warm-up) on 256 images, 64 test "
                        "images, short timings")
    a = p.parse_args(argv)
    if not 0 <= a.seed < 2**32:
        p.error(f"--seed must be in [0, 2**32), got {a.seed}")
    if a.threads is not None and a.threads <= 0:
        p.error(f"--threads must be positive, got {a.threads}")
    if a.epochs <= 0:
        p.error(f"--epochs must be positive, got {a.epochs}")
    if not 0.0 < a.target_rate <= 1.0:
        p.error(f"--target-rate must be in (0, 1], got {a.target_rate}")
    if not 8 <= a.digit_size <= Config.canvas:
        p.error(f"--digit-size must be in [8, {Config.canvas}], got {a.digit_size}")
    try:  # before training: a path that cannot be written would lose minutes of work
        # ('' as a Path is '.': an empty --out wrote into the current directory)
        check_nonempty(a.out, "--out")
        save = None if a.save is None else os.path.expanduser(a.save)
        check_output_path(save, "--save")  # (a str: a Path drops a trailing slash)
        out, save = Path(a.out).expanduser(), None if save is None else Path(save)
        make_writable_dir(str(out), "--out")  # last: nothing refused after it is made
    except ValueError as e:
        p.error(str(e))
    if a.threads is not None:  # only once every option is accepted (main(argv) in-process)
        torch.set_num_threads(a.threads)
    cfg = Config(epochs=a.epochs, seed=a.seed, target_rate=a.target_rate,
                 digit_size=a.digit_size)
    if a.quick:
        cfg = replace(cfg, epochs=min(a.epochs, 2), train_limit=256, test_limit=64,
                      timing_reps=3, curve_rates=(0.3,))
    # the warm-up leaves at least one epoch to the sparsity loss (``train``): print it so
    return replace(cfg, warmup_epochs=min(cfg.warmup_epochs, cfg.epochs - 1)), out, a.quick, save


def main(argv=None) -> dict:
    cfg, out, quick, save = parse_args(argv)
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg}")
    tr_x, tr_y, te_x, te_y = load_split(cfg.seed)
    tr_x, tr_y = tr_x[:cfg.train_limit], tr_y[:cfg.train_limit]
    te_x, te_y = te_x[:cfg.test_limit], te_y[:cfg.test_limit]
    test_x, _ = render(te_x, torch.Generator().manual_seed(cfg.seed + 1000), cfg.canvas,
                       cfg.digit_size, cfg.fragments, cfg.noise)
    print(f"train {len(tr_y)} digits (re-rendered each epoch), test {len(te_y)} canvases "
          f"{cfg.canvas}x{cfg.canvas}")

    model = build_model(cfg)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    train(model, tr_x, tr_y, cfg)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"training: {wall:.0f} s wall, {cpu:.0f} s CPU time of this process "
          f"(an idle-machine wall time is at most about the CPU time)")
    if save is not None:
        save_state(model, save)
        print(f"model saved to {save} (rebuild it with build_model(Config()))")

    ref = evaluate(model, test_x, te_y)
    compiled = laudtriton.compile(model, test_x, backend="cpu", tune="off")
    print(compiled.plan)
    with torch.no_grad():
        comp_logits = compiled(test_x.contiguous(memory_format=torch.channels_last))
    comp_acc = float((comp_logits.argmax(1) == te_y).float().mean())
    diff = float((comp_logits - ref["logits"]).abs().max() / ref["logits"].abs().max())
    print(f"reference vs compiled logits: max|diff|/max|ref| = {diff:.2e}; "
          f"per-block rates {[round(r, 3) for r in ref['block_rates']]}; "
          f"FLOPs ratio {ref['flops_ratio']:.3f}")

    xt = test_x.contiguous(memory_format=torch.channels_last)
    t_dense, t_comp, fmt = time_dense_vs_compiled(model, compiled, xt, cfg.timing_reps)
    speedup = t_dense / t_comp
    which = "the whole test set" if cfg.test_limit is None else "a test subset"
    print(f"timing, batch {len(te_y)} ({which}), interleaved medians of "
          f"{cfg.timing_reps}: dense ({fmt}) {t_dense * 1e3:.1f} ms, compiled "
          f"{t_comp * 1e3:.1f} ms")

    plot_masks(model, test_x, te_y, out / "digits_masks.png")
    print("latency vs rate (calibrated copies of the trained model):")
    rows = latency_curve(model, xt, cfg.curve_rates, reps=max(3, cfg.timing_reps // 3))
    plot_latency(rows, (ref["rate"], t_dense, t_comp), len(te_y), out / "digits_latency.png")
    print(f"figures: {out / 'digits_masks.png'}, {out / 'digits_latency.png'}")
    print(f"reference accuracy {ref['accuracy']:.4f}, compiled accuracy {comp_acc:.4f}, "
          f"mean rate {ref['rate']:.3f}, speedup {speedup:.2f} x")
    return {"reference_accuracy": ref["accuracy"], "compiled_accuracy": comp_acc,
            "rate": ref["rate"], "speedup": speedup, "quick": quick}


if __name__ == "__main__":
    main(sys.argv[1:])
