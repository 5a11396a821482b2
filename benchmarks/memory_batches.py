"""Resident memory of a compiled model fed many batch sizes: what README's Status says a
server feeding many batch sizes pays (per-batch-size packings and index tables).

LAUD-ResNet-50, layer skipping, 64x64 inputs, maskers calibrated to rate 0.5 on a batch
of 8, compiled for this CPU with ``tune="off"``; then ``--calls`` forwards of random
inputs whose batch size cycles 1, 2, ..., 10, printing the process's resident set size
(VmRSS, Linux, in MiB: kB / 1024) after compiling and at a few call counts.

    python benchmarks/memory_batches.py [--calls 400]
"""

from __future__ import annotations

import argparse
import time

import torch

import laudtriton
from laudtriton.bench import build_model
from laudtriton.nn.calibrate import calibrate_rates
from laudtriton.tune.numbers import ascii_int

MARKS = (10, 20, 50, 100, 150, 200, 250, 300, 350, 400, 600, 800, 1000)


def rss_mib() -> float:
    """This process's resident set size in MiB (VmRSS of /proc/self/status, in kB, / 1024)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (None: sys.argv[1:]), compile and print the resident set size as the
    forwards run. A bad ``--calls`` exits through argparse (code 2) before compiling."""
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--calls", type=ascii_int, default=400,
                    help="forwards to run, >= 1 (default 400)")
    args = ap.parse_args(argv)
    if args.calls < 1:  # compiled, printed one figure and ran nothing
        ap.error(f"--calls {args.calls}: accepted an int >= 1")
    torch.manual_seed(0)
    model = build_model("laud_resnet50", "layer", "4-4-2-1")
    x = torch.randn(8, 3, 64, 64)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    print(f"after compile: {rss_mib():.0f} MiB", flush=True)
    t0 = time.time()
    with torch.no_grad():
        for i in range(1, args.calls + 1):
            cm(torch.randn((i - 1) % 10 + 1, 3, 64, 64))
            if i in MARKS or i == args.calls:
                print(f"call {i}: {rss_mib():.0f} MiB ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
