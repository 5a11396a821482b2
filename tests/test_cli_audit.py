"""The CLI's argument handling: sweep's --variants given from Python, no command given,
option values that start with '-' or are not finite, an unread --cache-dir, and the
progress bar's ETA with tqdm."""

import pytest

from laudtriton import progress as progress_mod
from laudtriton.cli import main
from laudtriton.progress import Progress
from laudtriton.tune.options import parse_variants


def _error(capsys) -> str:
    """The one error line of a refused command, after '<prog>: error: '."""
    err = capsys.readouterr().err.strip().splitlines()[-1]
    return err.split(": error: ", 1)[1]


@pytest.mark.parametrize("variants,says", [
    (iter([]), "--variants is empty"),  # an empty generator timed dense alone, silently
    (5, "--variants must be a comma list or a sequence of variant names, got int 5"),
    (b"gather", "--variants must be a comma list or a sequence of variant names, got "
                "bytes b'gather'"),  # iterated: "unknown variant 103"
    (["gather", 1], "--variants: 1 is not a variant name"),
])
def test_parse_variants_refuses_what_is_not_a_list_of_names(variants, says):
    """sweep(variants=...) from Python: a TypeError, or a silent dense-only sweep."""
    with pytest.raises(ValueError) as e:
        parse_variants(variants)
    assert str(e.value).startswith(says)


@pytest.mark.parametrize("argv", [[], ["-v"]])
def test_no_command_lists_the_commands(argv, capsys):
    """`laudtriton` alone said a command was required without naming any."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("laudtriton: error: the following arguments are required: "
                          "command, one of env, demo, bench, sweep, ")
    assert all(c in err for c in ("plot", "predict", "calibrate", "design", "gpucheck"))


@pytest.mark.parametrize("argv,says", [
    (["demo", "--rate", "-inf"], "--rate must be in [0, 1], got -inf"),
    (["bench", "--rates", "-1e-3"], "--rates '-1e-3': rates must lie in [0, 1]"),
    (["design", "--target-rate", "-inf"], "--target-rate -inf must be in (0, 1]"),
])
def test_a_value_that_starts_with_a_dash_is_explained(argv, says, capsys):
    """'-inf' and '-1e-3' are not negative numbers to argparse but options: the
    message said the option had no argument, though one was given. Given as the hint
    says, the value reaches the option's own check."""
    opt = argv[1]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and _error(capsys).startswith(
        f"argument {opt}: expected one argument; a value that starts with '-' is given "
        f"as {opt}=VALUE")
    assert main([argv[0], f"{opt}={argv[2]}"]) == 2
    assert _error(capsys).startswith(says)


def _csv(tmp_path):
    from laudtriton.ops import BlockSpec
    from laudtriton.tune.sweep_csv import write_csv

    spec = BlockSpec(24, 6, 24, 1, False, (10, 10), "spatial", 2)
    rows = [{"model": "tinynet", "block": "layer1.0", "spec": spec.short(), "S": 2,
             "rate": rate, "variant": "dense", "config": "{}", "seconds": 1e-3,
             "dense_seconds": 1e-3, "ratio": 1.0, "flops_ratio": rate,
             "spec_key": spec.key(), "device": "cpu"} for rate in (0.2, 0.5)]
    return write_csv(rows, tmp_path / "s.csv")


def test_plot_warns_of_a_missing_cache_dir_it_does_not_read(tmp_path, capsys):
    """A CSV plotted with --no-predicted reads no cache, so its --cache-dir is not
    refused (test_plot), but one that does not exist (a mistyped path) was passed over
    without a word, where --from cache refuses it."""
    argv = ["plot", "--from", str(_csv(tmp_path)), "--out", str(tmp_path / "o"),
            "--no-predicted", "--cache-dir"]
    missing = str(tmp_path / "no-such-dir")
    assert main(argv + [missing]) == 0
    out, err = capsys.readouterr()
    assert out and err.startswith(f"laudtriton plot: warning: --cache-dir {missing!r} does "
                                  "not exist; ") and err.endswith(
        "(not read here: a CSV plotted with --no-predicted reads no cache)\n")
    assert main(argv + [str(tmp_path)]) == 0  # one that exists: nothing said
    assert capsys.readouterr().err == ""
    assert main(["plot", "--from", "cache", "--out", str(tmp_path / "c"),
                 "--cache-dir", missing]) == 2
    assert _error(capsys).startswith(f"--cache-dir {missing!r} does not exist; ")


def test_tqdm_eta_counts_measured_items_only(monkeypatch):
    """With tqdm, items found cached (done at once) counted in the bar's rate: 8 cached
    and 1 measured in 10 s read 9 items per 10 s, so an ETA of ~1 s for an item left
    that takes 10 s. The stderr line counted measured items only already. (On a terminal
    only: off one tqdm is not used since session 65, test_review_s65f_audit.py.)"""
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(progress_mod, "_is_tty", lambda: True)
    clock = [0.0]
    bar = Progress(10, True, desc="sweep", unit="item")
    assert bar.bar is not None
    bar.bar._time = lambda: clock[0]
    bar.bar.start_t = bar.bar.last_print_t = 0.0
    for i in range(8):
        clock[0] = 0.001 * (i + 1)
        bar.update("cached", timed=False)
    clock[0] = 10.008
    bar.update("measured")
    text = tqdm.tqdm.format_meter(**bar.bar.format_dict)
    bar.close()
    assert " 9/10 [00:10<00:10, " in text

