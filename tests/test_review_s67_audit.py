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


def test_clearing_a_corrupt_cache_file_warns_once(tmp_path, caplog):
    """``TuneCache.clear`` of a corrupt file logged two warnings: "ignoring it (the next
    write moves it aside)", from counting the entries before clearing, then "moved it to
    ..., not deleted". The first was wrong there (clear moved it, not a later write), and
    ``laudtriton cache clear`` printed a third line saying the same. Now the second alone."""
    import logging

    cache = TuneCache(str(tmp_path), enabled=True)
    cache.path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert cache.clear() == 0
    (record,) = caplog.records
    assert "moved it to" in record.getMessage() and "next write" not in record.getMessage()
    assert cache.cleared_aside is not None and not cache.path.exists()
