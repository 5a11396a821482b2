"""bench's rows name the layout as the CLI writes it (session 64): ``bench()`` called from
Python with a list granularity wrote "[4, 4, 2, 1]" in its rows and CSV, where the CLI's
rows say "4-4-2-1"."""

import pytest
import torch

import laudtriton.baseline as baseline_module
from laudtriton.bench import bench
from laudtriton.tune.layout_options import layout_texts


@pytest.mark.parametrize("granularity", [[4, 4, 2, 1], (4, 4, 2, 1), "4-4-2-1",
                                         " 4-4-2-1 "])
def test_layout_texts_write_a_list_as_the_cli_does(granularity):
    assert layout_texts("spatial", granularity, 1)["granularity"] == "4-4-2-1"


def test_layout_texts_write_a_number_as_str_does():
    assert layout_texts("spatial", 2, 2) == dict(mode="spatial", granularity="2",
                                                  channel_granularity="2")


def test_bench_rows_of_a_list_granularity(monkeypatch):
    """The model takes the list; the rows say "4-4-2-1"."""
    monkeypatch.setattr(baseline_module, "interleaved_medians",
                        lambda fns, warmup=2, reps=20, setup=None: [0.2] * len(fns))
    torch.manual_seed(0)
    rows = bench("laud_resnet50", "spatial", [4, 4, 2, 1], [0.5], reps=1, tune="off",
                 blocks=False, log=lambda s: None)
    assert rows and {r.granularity for r in rows} == {"4-4-2-1"}
