"""Review s66j of ``laudtriton gpucheck`` (the one prepared GPU run): defects found by
reading and by CPU runs, each with a test that failed on the code before its fix."""

from __future__ import annotations

import json
import math

import pytest

from laudtriton.gpucheck import record


def _strict_json(text: str) -> object:
    """``text`` parsed as RFC 8259 JSON: NaN, Infinity and -Infinity are refused (Python's
    json module takes them by default; jq 1.6, JavaScript's JSON.parse and most other
    readers do not)."""
    def refuse(token: str) -> object:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value, text", [(math.nan, "nan"), (math.inf, "inf"),
                                         (-math.inf, "-inf")])
def test_summary_json_stays_valid_json_with_a_non_finite_number(tmp_path, value, text):
    """summary.json held NaN (or Infinity) as a bare token, which is not JSON, where part
    4 records a whole model whose logits came out NaN or inf (``whole_vs_dense_on_its
    _masks``, ``max_rel_error``): the very run the team must read it for. A non-finite
    number is now written as a string ("nan", "inf", "-inf"), the rest as it was."""
    r = record.Run(tmp_path, 60, "cpu")
    r.info["whole_vs_dense_on_its_masks"] = {"whole b1": value, "whole b64": 0.5}
    r.checks.append({"check": "c", "ok": False, "error": "e"})
    record.save(r, tmp_path)
    summary = _strict_json((tmp_path / "summary.json").read_text())
    assert summary["info"]["whole_vs_dense_on_its_masks"] == {"whole b1": text,
                                                              "whole b64": 0.5}
    assert summary["checks"] == r.checks


def test_a_table_runs_json_stays_valid_json_with_nan(tmp_path):
    """``TableRun.write`` (benchmarks/gpu_overhead.py's record, whose device timings are
    NaN where they cannot be measured) wrote NaN as a bare token, not JSON."""
    r = record.TableRun(tmp_path, 60, "cpu", ("a",), "t")
    r.info["device_us"] = math.nan
    r.info["nested"] = [1.0, {"x": math.inf}]
    r.write()
    data = _strict_json((tmp_path / "t.json").read_text())
    assert data["info"]["device_us"] == "nan"
    assert data["info"]["nested"] == [1.0, {"x": "inf"}]
