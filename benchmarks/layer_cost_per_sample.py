"""What the ``compact`` variant costs per active sample: a few LAUD-ResNet-101 blocks
(layer skipping, batch 8) run with the first n samples' gates on, n = 0..8.

Each block's input is a random ReLU output of its shape (channels_last); the time is the
median of 20 in-place calls after 5 warm-up ones, each on a fresh copy of the input.
It shows how the time of a block grows with the samples it runs: the first sample pays
the weights' reads, each further one its share of the multiply-adds.

    python benchmarks/layer_cost_per_sample.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import laudtriton
from laudtriton import runtime
from laudtriton.bench import build_model
from laudtriton.nn.block import BlockMasks
from laudtriton.ops.layer import compact_block

BLOCKS = ("layer1.1", "layer2.1", "layer3.5", "layer4.1")


def time_block(fb, x: torch.Tensor, n: int) -> float:
    """Median ms of ``compact_block`` in place on a copy of x with the first n gates on."""
    gate = torch.zeros(x.shape[0], 1, 1, 1)
    gate[:n] = 1
    masks = BlockMasks(gate, None, None, None)
    times = []
    for _ in range(25):
        xx = x.clone()
        t0 = time.perf_counter()
        compact_block(fb, xx, masks, inplace=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[5:]) * 1e3


def main() -> None:
    # no options: --help prints the description, anything else is refused (both
    # ran the whole benchmark, minutes of compiling and timing)
    argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split())
                            ).parse_args()
    runtime.retain_freed_memory()  # as ``laudtriton bench`` does
    torch.manual_seed(0)
    model = build_model("laud_resnet101", "layer", "4-4-2-1")
    cm = laudtriton.compile(model, torch.randn(8, 3, 224, 224), backend="cpu", tune="off")
    blocks = {b.name: b for b in cm.blocks}
    print("block      ms at n = 0..8 active samples of 8")
    for name in BLOCKS:
        blk = blocks[name]
        x = torch.relu(torch.randn(8, blk.spec.in_channels, *blk.spec.in_hw))
        x = x.contiguous(memory_format=torch.channels_last)
        ms = [time_block(blk.fb, x, n) for n in range(9)]
        print(f"{name:10s} " + " ".join(f"{t:6.2f}" for t in ms)
              + f"   n=4 / n=8: {ms[4] / ms[8]:.3f}")


if __name__ == "__main__":
    main()
