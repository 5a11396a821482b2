"""gpucheck's parts, on paths that only the GPU run takes: a compile worker killed outright
by a job (a segfault or abort in a Triton compile), and the labels of part 4's rows."""

import logging
import multiprocessing
import os
import time

import pytest
import torch

from laudtriton.gpucheck import record, warm


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the compile workers")
def test_a_job_that_kills_its_compile_worker_is_not_run_again(tmp_path, monkeypatch):
    """A check or Triton variant that kills its worker process (SIGABRT here; an LLVM
    assertion or a segfault in a compile on the GPU) left its job claimed and not done:
    the main process then ran it itself, and the same crash ended the whole run. It is
    a failure now, not run again: the check (sticky), the variant on its block (deny)."""
    from laudtriton.ops import BlockSpec

    def check(i):
        def run():
            if i == 1:
                os.abort()
        return run

    names = [f"c{i}" for i in range(4)]
    monkeypatch.setattr(warm, "part2_checks", lambda device: [(n, check(i))
                                                              for i, n in enumerate(names)])
    spec = BlockSpec(32, 8, 32, 1, False, (8, 8), "spatial", 2)

    def warm_block(device, s, n):  # as the real one: names the variant, then runs it
        warm._progress.debug("warming fused", extra={"variant": "fused"})
        os.abort()
    monkeypatch.setattr(warm, "warm_block", warm_block)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # no OpenMP after fork
    fork = multiprocessing.get_context("fork")  # the patches above reach the workers
    monkeypatch.setattr(multiprocessing, "get_context", lambda kind: fork)
    r = record.Run(tmp_path, 100, "cpu")
    r.device = "cuda"
    part3 = [("warm b1 spatial #0", spec.to_dict())]
    assert warm.warm_compiles(r, time.perf_counter() + 60, 2, lambda: part3) == 5
    assert list(r.sticky) == ["c1"] and "SIGABRT" in r.sticky["c1"], r.sticky
    assert list(r.deny) == [(spec.key(), "fused")] and "SIGABRT" in r.deny[(spec.key(),
                                                                           "fused")]
    (failed,) = [c for c in r.checks if not c["ok"]]
    assert failed["check"] == "warm b1 spatial #0 fused"
    assert "died running it" in failed["error"]


def test_warm_block_names_each_triton_variant_before_running_it(monkeypatch):
    """What a worker writes into its job's claim file: each Triton variant's name, before
    its first config runs (not the dense one, which compiles nothing)."""
    import laudtriton.ops as ops
    from laudtriton.ops import BlockSpec

    seen = []

    class Fake:
        def __init__(self, name, triton):
            self.name, self.needs_triton, self.run_inplace = name, triton, None

        def configs(self, spec):
            return [{"c": 0}]

        def run(self, fb, x, masks, cfg):
            seen.append(("run", self.name))

    class Notes(logging.Handler):
        def emit(self, rec):
            seen.append(("named", rec.variant))

    monkeypatch.setattr(ops, "variants_for", lambda spec, backend: [
        Fake("dense", False), Fake("gather", True), Fake("fused", True)])
    spec = BlockSpec(32, 8, 32, 1, False, (8, 8), "spatial", 2)
    handler = Notes(logging.DEBUG)
    monkeypatch.setattr(warm._progress, "level", logging.DEBUG)
    warm._progress.addHandler(handler)
    try:
        warm.warm_block("cpu", spec, 1)
    finally:
        warm._progress.removeHandler(handler)
    assert seen[0] == ("named", "gather") and ("named", "dense") not in seen
    assert seen.index(("named", "fused")) > seen.index(("run", "gather"))
    assert seen.index(("named", "fused")) < seen.index(("run", "fused"))
