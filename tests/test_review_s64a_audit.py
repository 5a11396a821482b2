"""Review of session 64's interrupt commit (7590daa): ``laudtriton sweep`` stopped by
SIGTERM (or Ctrl-C) before it saved anything left behind the --cache-dir folder it had
made, which a refused sweep removes (``remove_if_empty``), as plot removes its --out."""


import pytest

import laudtriton.tune.sweep as sweep_mod
from laudtriton.cli import main


def _sweep(tmp_path) -> int:
    """``laudtriton sweep`` of one small item, into a --cache-dir it must make."""
    return main(["sweep", "--rates", "0.5", "--blocks", "layer4.2", "--cache-dir",
                 str(tmp_path / "new" / "c"), "--csv", str(tmp_path / "s.csv"),
                 "--no-progress", "--input-size", "64"])


def test_sweep_stopped_while_planning_removes_the_cache_folder_it_made(
        sigterm_self, tmp_path, monkeypatch, sigterm_guard, capsys):
    """A SIGTERM while the blocks were built (before any timing) ended the sweep with
    'laudtriton sweep: interrupted' and exit 130, but left the empty --cache-dir folders
    it had made (tmp/new/c): a sweep refused there (a bad --blocks) removes them."""
    monkeypatch.setattr(sweep_mod, "model_blocks", sigterm_self)
    assert _sweep(tmp_path) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "laudtriton sweep: interrupted"
    assert not (tmp_path / "new").exists()
    with pytest.raises(sigterm_guard):  # the handler before main's (the guard's) is back
        sigterm_self()


def test_sweep_stopped_before_an_item_was_saved_removes_the_cache_folder_it_made(
        sigterm_self, tmp_path, monkeypatch, sigterm_guard, capsys):
    """A SIGTERM while the first item was timed: sweep's own line and its CSV (0 rows),
    exit 130, but the empty --cache-dir folders it had made were left behind."""
    monkeypatch.setattr(sweep_mod, "time_variants", sigterm_self)
    assert _sweep(tmp_path) == 130
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("sweep: interrupted after 0 of 1 item(s): its 0 rows ")
    assert not any(line.endswith(": interrupted") for line in lines)
    assert (tmp_path / "s.csv").is_file()
    assert not (tmp_path / "new").exists()
