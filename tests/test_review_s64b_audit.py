"""Review of 38c7f8a..ac972c5 (the remembered module code and stored spec keys; bench's
rows of a list granularity; interrupted sweep and calibrate): what they changed for a
caller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import laudtriton.baseline as baseline_module
from laudtriton.bench import bench
from laudtriton.ops.registry import get_variant
from laudtriton.ops.spec import BlockSpec
from laudtriton.tune import keys
from laudtriton.tune.cache import stored_spec_key
from laudtriton.tune.layout_options import layout_texts

SPEC = BlockSpec(in_channels=64, width=64, out_channels=256, stride=1, downsample=True,
                 in_hw=(56, 56), mode="spatial", granularity=4)


@pytest.mark.parametrize("granularity,text", [
    (np.array([4, 4, 2, 1]), "4-4-2-1"),
    (torch.tensor([4, 4, 2, 1]), "4-4-2-1"),
    (range(1, 5), "1-2-3-4"),
    ([" 4 ", "4", "2", "1"], "4-4-2-1"),
    ([torch.tensor(4), np.array(4), np.int64(2), 1], "4-4-2-1"),
    (torch.tensor(2), "2"),
])
def test_layout_texts_write_every_list_form_the_model_takes_as_the_cli_does(granularity,
                                                                            text):
    """93fda94 wrote a list or tuple as "4-4-2-1" but the other forms of four values the
    model takes (``nn.stages.per_stage``: a range, a 1-d array or tensor; texts with
    spaces; 0-d arrays) as ``str`` writes them: bench's rows and CSV said "[4 4 2 1]",
    "tensor([4, 4, 2, 1])", "range(1, 5)", " 4 -4-2-1", "tensor(4)-tensor(4)-..."."""
    assert layout_texts("spatial", granularity, 1)["granularity"] == text


@pytest.mark.parametrize("mode", [[" spatial ", "spatial", "channel", "layer"],
                                  np.array(["spatial", "spatial", "channel", "layer"])])
def test_layout_texts_write_a_list_mode_as_the_cli_does(mode):
    """A list of modes with spaces said " spatial -spatial-..."; an array of them
    "['spatial' 'spatial' 'channel' 'layer']"."""
    assert layout_texts(mode, "4-4-2-1", 1)["mode"] == "spatial-spatial-channel-layer"


def test_layout_texts_refuse_a_list_of_other_than_four_stages():
    """Not written as the one value for every stage: [2] is no granularity the model
    takes (it has 4 stages), and "2" would read as one."""
    with pytest.raises(ValueError, match="granularity .* has 1 stages"):
        layout_texts("spatial", [2], 1)


def test_bench_rows_of_an_array_granularity(monkeypatch):
    """The model takes a 1-d numpy array; bench's rows said "[4 4 2 1]"."""
    monkeypatch.setattr(baseline_module, "interleaved_medians",
                        lambda fns, warmup=2, reps=20, setup=None: [0.2] * len(fns))
    rows = bench("laud_resnet50", "spatial", np.array([4, 4, 2, 1]), [0.5], reps=1,
                 tune="off", blocks=False, log=lambda s: None, progress=False)
    assert rows and {r.granularity for r in rows} == {"4-4-2-1"}


@pytest.mark.parametrize("field,value", [("granularity", np.int64(4)),
                                         ("in_hw", (np.int64(56), 56)),
                                         ("dtype", torch.float32)])
def test_stored_spec_key_refuses_a_value_that_is_no_json_as_from_dict_does(field, value):
    """``stored_spec_key`` is ``BlockSpec.from_dict(d).key()`` remembered, but a value
    json cannot write raised json's TypeError ("Object of type int64 is not JSON
    serializable") where ``BlockSpec.from_dict`` raises its ValueError naming the field."""
    d = {**SPEC.to_dict(), field: value}
    with pytest.raises(ValueError, match=f"BlockSpec.{field}") as e:
        BlockSpec.from_dict(d)
    with pytest.raises(ValueError) as e2:
        stored_spec_key(d)
    assert str(e2.value) == str(e.value)


def test_a_remembered_code_does_not_hide_an_edit(monkeypatch):
    """Guard for 38c7f8a (passes): with both texts' code remembered, a variant's module
    whose code differs from the one this process first read still raises SourceChanged,
    and one that differs in a comment only still gives the same hash."""
    f = keys._source_files(get_variant("gather"))[0]
    text = f.read_text()
    before = keys.source_hash("gather")
    read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read_text(self, *a, **k)
                        + ("\nEDITED = 1\n" if self == f else ""))
    keys.code_of(text + "\nEDITED = 1\n")
    with pytest.raises(keys.SourceChanged, match=f.name):
        keys.source_hash("gather")
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read_text(self, *a, **k)
                        + ("\n# a comment\n" if self == f else ""))
    assert keys.source_hash("gather") == before
