"""Session 67: small defects of its own review, each test written before its fix."""

import json

from laudtriton.predict.calibration import predictor_for
from laudtriton.predict.network import model_specs
from laudtriton.tune.cache import TuneCache


def test_predictor_note_names_stale_timings_rather_than_none(tmp_path, monkeypatch):
    """A cache whose timings are all stale (another source hash: the kernels changed) made
    ``predict`` and ``design`` say "(no cached timings to fit on)" as of an empty cache; the
    note now counts the stale ones and says how to see them."""
    monkeypatch.delenv("LAUDTRITON_CACHE", raising=False)
    cache = TuneCache(str(tmp_path), enabled=True)
    specs = list(dict.fromkeys(s for _, s in model_specs("laud_resnet50")))[:3]  # distinct
    for i, spec in enumerate(specs):
        cache.record(spec, 0.5, {"dense": {"{}": 1e-3 * (i + 1)}})
    data = json.loads(cache.path.read_text())
    for e in data["entries"].values():
        e["source_hash"] = "another source"
    cache.path.write_text(json.dumps(data))
    _, factors, note = predictor_for("cpu", str(tmp_path))  # (uncalibrated: it warns)
    assert factors is None
    assert "3 stale timings" in note and "laudtriton cache ls --all" in note
    _, _, empty = predictor_for("cpu", str(tmp_path / "none"))
    assert empty.endswith("(no cached timings to fit on)")  # an empty cache: as before
