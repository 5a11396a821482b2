"""Audit of ``laudtriton predict --validate`` and its messages (``predict.commands``)."""

import json
from pathlib import Path

import pytest

from laudtriton.cli import main
from laudtriton.tune.cache import TuneCache


def _validate(capsys, cache_dir, *extra):
    rc = main(["predict", "--validate", "--hardware", "cpu", "--cache-dir", str(cache_dir),
               *extra])
    return rc, capsys.readouterr().err


def _another_devices_file(cache_dir: Path) -> None:
    """This device's cache file name holding another device's timings (a copy)."""
    path = TuneCache(cache_dir, device="cpu").path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "device": "another machine", "entries": {}}))


@pytest.mark.parametrize("setup", [
    lambda d: None,
    _another_devices_file,
    lambda d: TuneCache(d, device="cpu").path.write_text("{}"),
], ids=["empty-cache-dir", "another-devices-file", "corrupt-file"])
def test_validate_names_include_stale_only_where_it_finds_timings(capsys, tmp_path, setup):
    """With no timing of this device in any version, --validate said "--include-stale
    also reads those of other versions"; given, it failed the same way."""
    setup(tmp_path)
    rc, err = _validate(capsys, tmp_path)
    assert rc == 2 and "holds no timings of this device" in err
    assert "--include-stale" not in err, err
    rc, err = _validate(capsys, tmp_path, "--include-stale")
    assert rc == 2 and "holds no timings of this device" in err

