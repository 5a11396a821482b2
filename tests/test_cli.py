"""The ``laudtriton`` command on bad input: exit code 2 and one line naming the option,
before any model is built or timed; files it writes are readable like any other; ``env``
and the ``demo`` (the README's main job) run end to end."""

import logging
import math
import os
import re
import stat

import pytest
import torch

import laudtriton
from laudtriton.cli import main


@pytest.mark.parametrize("argv,named", [
    (["bench", "--batch", "0"], "--batch"),
    (["bench", "--reps", "0"], "--reps"),
    (["bench", "--repeat", "0"], "--repeat"),
    (["bench", "--threads", "-1"], "--threads"),
    (["bench", "--threads", "2147483648"], "--threads must be in [0, "),
    (["bench", "--threads", str((os.cpu_count() or 1) + 1)], "at most the "),
    (["bench", "--allocator", "jemalloc"], "--allocator"),
    (["bench", "--channel-granularity", "0"], "--channel-granularity"),
    (["bench", "--channel-granularity", "2-x"], "--channel-granularity '2-x' is not a positive"),
    (["bench", "--channel-granularity", "2-2"], "--channel-granularity '2-2' has 2 stages"),
    (["bench", "--processes", "0"], "--processes"),
    (["bench", "--rates", "0:1:0.35,"], "--rates"),
    (["bench", "--rates", "1.5"], "--rates"),
    (["bench", "--rates", "0:1:1e-9"], "--rates '0:1:1e-9': step 1e-09 is below 1e-06"),
    (["bench", "--granularity", "-1"], "--granularity '-1' is not a positive int"),
    (["bench", "--granularity", "\u00b2"], "--granularity '\u00b2' is not a positive int"),
    (["bench", "--mode", "bogus"], "--mode 'bogus' unknown"),
    (["bench", "--mode", "spatial-channel"], "--mode 'spatial-channel' has 2 stages"),
    (["sweep", "--mode", "layer-x-layer-layer"],
     "--mode 'layer-x-layer-layer' is not valid (stage 2: 'x')"),
    (["demo", "--reps", "0"], "--reps"),
    # no upper bound: demo --reps 1e12 timed without end after compiling
    (["demo", "--reps", "1000000000000"], "--reps must be at most 10000, got 1000000000000"),
    (["bench", "--reps", "10001"], "--reps must be at most 10000, got 10001"),
    (["bench", "--repeat", "101"], "--repeat must be at most 100, got 101"),
    (["bench", "--processes", str(10**17)], f"--processes must be at most 100, got {10**17}"),
    (["demo", "--rate", "2"], "--rate"),
    (["sweep", "--input-size", "0"], "--input-size"),
    (["sweep", "--dtype", "foo"], "--dtype 'foo' unknown"),
    (["sweep", "--variants", "gather,nope"], "--variants: unknown variant 'nope'"),
    (["sweep", "--model", "foo"], "--model 'foo' unknown"),
    (["plot", "--from", "cache", "--out", "x", "--device", "foo"], "--device"),
    (["calibrate", "--device", "foo"], "--device"),
    (["design", "--model", "laud_resnet50", "--target-rate", "0.5", "--top", "0"], "--top"),
    (["design", "--target-rate", "0.5", "--granularities", "2,100"],
     "--granularities: 100 larger than every stage's map (the largest is 56x56)"),
    (["design", "--target-rate", "0.5", "--granularities", "1,,2"],
     "--granularities '1,,2' is malformed"),
    # int() reads other scripts' digits and underscores: S = 4 and S = 10 were searched
    (["design", "--target-rate", "0.5", "--granularities", "\u0664"],
     "--granularities '\u0664' is malformed"),
    (["design", "--target-rate", "0.5", "--granularities", "1_0"],
     "--granularities '1_0' is malformed"),
    (["design", "--target-rate", "0.5", "--granularities", "0,2"],
     "--granularities '0,2' is malformed"),
    (["sweep", "--input-size", str(2**62)], "--input-size must be in [32, 4096]"),
    # a trailing slash: sweep wrote a file 'out', bench failed after its whole run
    (["sweep", "--csv", "out/"], "--csv 'out/' names a directory; give a file name"),
    (["bench", "--csv", "out/"], "--csv 'out/' names a directory; give a file name"),
])
def test_bad_options_name_themselves(argv, named, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"laudtriton {argv[0]}: error:")


@pytest.mark.parametrize("argv,flag", [
    (["bench", "--csv", ""], "--csv"),
    (["sweep", "--csv", ""], "--csv"),
    (["sweep", "--cache-dir", ""], "--cache-dir"),
    (["cache", "ls", "--cache-dir", ""], "--cache-dir"),
    (["cache", "clear", "--cache-dir", ""], "--cache-dir"),
    (["cache", "merge", "a.json", "--out", ""], "--out"),
    (["calibrate", "--cache-dir", ""], "--cache-dir"),
    (["plot", "--from", "cache", "--out", ""], "--out"),
    (["plot", "--from", "cache", "--out", "o", "--cache-dir", ""], "--cache-dir"),
    (["predict", "--cache-dir", ""], "--cache-dir"),
    (["design", "--target-rate", "0.5", "--cache-dir", ""], "--cache-dir"),
    (["gpucheck", "--out", ""], "--out"),
])
def test_empty_paths_are_refused(argv, flag, capsys, tmp_path, monkeypatch):
    """'' would silently mean the current directory (or, for --csv, no file or the default
    name): one line naming the option, nothing read or written."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    what = ("a directory, or leave the option out for the default" if flag == "--cache-dir"
            else "a directory" if argv[0] in ("plot", "gpucheck") else "a path")
    assert capsys.readouterr().err == (f"laudtriton {argv[0]}: error: {flag} '' is empty; "
                                       f"give {what}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["predict", "--model", "laud_resnet50", "--rates", "0.5"],
    ["predict", "--validate"],
    ["design", "--target-rate", "0.5"],
    ["plot", "--from", "cache", "--out", "o"],
])
def test_a_cache_dir_that_does_not_exist_is_refused_where_only_read(argv, capsys, tmp_path,
                                                                   monkeypatch):
    """predict, design and plot only read the cache and the calibration: a mistyped
    --cache-dir ran on the uncalibrated defaults (0.02 TMAC/s) with exit status 0, and a
    warning that named neither the option nor the path."""
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--cache-dir", "typo_dir"]) == 2
    assert capsys.readouterr().err == (
        f"laudtriton {argv[0]}: error: --cache-dir 'typo_dir' does not exist; give the "
        "directory that holds the autotune cache and calibration (`laudtriton sweep` and "
        "`laudtriton calibrate` write them), or leave the option out for the default\n")
    assert list(tmp_path.iterdir()) == []


def test_a_cache_dir_variable_that_names_no_directory_is_refused_where_only_read(
        capsys, tmp_path, monkeypatch):
    """$LAUDTRITON_CACHE_DIR as --cache-dir; a --cache-dir given wins over it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", "typo_dir")
    assert main(["predict", "--hardware", "v100", "--no-fit", "--rates", "0.5"]) == 2
    assert capsys.readouterr().err == (
        "laudtriton predict: error: LAUDTRITON_CACHE_DIR 'typo_dir' does not exist; give "
        "the directory that holds the autotune cache and calibration (`laudtriton sweep` "
        "and `laudtriton calibrate` write them), or unset it for the default\n")
    (tmp_path / "given").mkdir()
    assert main(["predict", "--hardware", "v100", "--no-fit", "--rates", "0.5",
                 "--cache-dir", "given"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["given"]


@pytest.mark.parametrize("argv,says", [
    (["bench", "--mode", "layer", "--granularity", "2"], "--granularity '2' is read only by "
     "spatial and both stages, and mode 'layer' has none"),
    (["bench", "--mode", "spatial", "--channel-granularity", "4"], "--channel-granularity "
     "'4' is read only by channel and both stages, and mode 'spatial' has none"),
    (["sweep", "--mode", "channel-channel-layer-layer", "--granularity", "2-2-2-2"],
     "--granularity '2-2-2-2' is read only by spatial and both stages, and mode "
     "'channel-channel-layer-layer' has none"),
    (["predict", "--mode", "layer", "--channel-granularity", "2"], "--channel-granularity "
     "'2' is read only by channel and both stages, and mode 'layer' has none"),
    (["design", "--target-rate", "0.5", "--modes", "spatial,layer", "--channel-granularity",
      "2"], "--channel-granularity '2' is read only by channel and both stages, and --modes "
     "'spatial,layer' has none"),
    (["design", "--target-rate", "0.5", "--modes", "layer,channel", "--granularities",
      "3,5"], "--granularities '3,5' is read only by spatial and both stages, and --modes "
     "'layer,channel' has none"),
])
def test_a_granularity_no_stage_reads_is_refused(argv, says, capsys, tmp_path, monkeypatch):
    """bench, sweep and predict ran the default's layout with it, bench's CSV recording the
    value given (and spatial mode refused --channel-granularity 3 for not dividing a width
    while it ignored 4)."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err == f"laudtriton {argv[0]}: error: {says}; leave it out\n"
    assert list(tmp_path.iterdir()) == []


def test_the_default_granularities_pass_in_any_form_where_no_stage_reads_them(capsys):
    """Written out as the default ('4-4-2-1', '1-1-1-1') they change nothing: accepted."""
    assert main(["predict", "--mode", "layer", "--granularity", "4-4-2-1",
                 "--channel-granularity", "1-1-1-1", "--rates", "0.5", "--hardware", "v100",
                 "--no-fit"]) == 0
    assert "mode layer" in capsys.readouterr().out


def test_a_home_directory_of_no_user_is_refused(capsys, tmp_path, monkeypatch):
    """'~nouser/x': pathlib raised a RuntimeError (a traceback, exit status 1) in sweep
    and cache, and compile raised it where its docstring says ValueError."""
    from laudtriton.tune.cache import TuneCache

    monkeypatch.chdir(tmp_path)
    path = "~no_such_user_laudtriton/x"
    assert main(["cache", "ls", "--cache-dir", path]) == 2
    assert capsys.readouterr().err == (
        f"laudtriton cache: error: --cache-dir {path!r}: '~no_such_user_laudtriton' names "
        "no home directory here; give another directory, or leave the option out for the "
        "default\n")
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", path)
    with pytest.raises(ValueError, match="^LAUDTRITON_CACHE_DIR .* names no home directory"):
        TuneCache()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["bench", "sweep"])
def test_csv_that_cannot_be_written_fails_before_timing(command, tmp_path, capsys):
    argv = [command, "--csv", str(tmp_path)]  # a directory
    if command == "sweep":
        argv += ["--device", "cpu"]
    assert main(argv) == 2
    assert "--csv" in capsys.readouterr().err
    assert main([command, "--csv", str(tmp_path / "no" / "such.csv")]
                + argv[3:]) == 2
    assert "--csv" in capsys.readouterr().err  # refused up front, not after timing
    assert main([command, "--csv", "/proc/laudtriton.csv"] + argv[3:]) == 2  # no file there
    assert "--csv '/proc/laudtriton.csv' cannot be written" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")  # a file where its directory should be
    assert main([command, "--csv", str(tmp_path / "f" / "x.csv")] + argv[3:]) == 2
    assert f"the directory {str(tmp_path / 'f')!r} is a file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "sweep"])
def test_csv_that_is_a_pipe_a_dangling_link_or_a_cache_file_is_refused(command, tmp_path,
                                                                       monkeypatch, capsys):
    """sweep's CSV is written beside its path and moved over it: --csv /dev/null replaced
    the device with a file; a link into a missing folder failed after the sweep; bench and
    sweep wrote a CSV over a calibration file or another device's cache (sweep refused
    only its own device's file)."""
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path))
    extra = ["--device", "cpu"] if command == "sweep" else []
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert main([command, "--csv", str(fifo)] + extra) == 2
    assert (f"--csv {str(fifo)!r} is not a regular file (a device, a pipe or a socket)"
            in capsys.readouterr().err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "dangling.csv"
    link.symlink_to(tmp_path / "no" / "such.csv")
    assert main([command, "--csv", str(link)] + extra) == 2
    assert (f"--csv {str(link)!r}: the directory {str(tmp_path / 'no')!r} does not exist"
            in capsys.readouterr().err)
    for name in ("calibration_Some_CPU_2t.v1.json", "Another_CPU_avx2_2t.v1.json",
                 "Another_CPU_avx2_2t.v1.json.lock"):
        kept = tmp_path / name
        kept.write_text("{}")
        assert main([command, "--csv", str(kept)] + extra) == 2
        assert (f"--csv {str(kept)!r} is a file of the autotune cache folder"
                in capsys.readouterr().err)
        assert kept.read_text() == "{}"
    (tmp_path / "to_cache.csv").symlink_to(kept)  # a link to one is refused too
    assert main([command, "--csv", str(tmp_path / "to_cache.csv")] + extra) == 2
    assert "is a file of the autotune cache folder" in capsys.readouterr().err


def test_predict_names_its_variants_option_and_prints_rates_apart(capsys, tmp_path):
    assert main(["predict", "--variants", "bogus", "--cache-dir", str(tmp_path)]) == 2
    assert "--variants: variant 'bogus' has no latency model" in capsys.readouterr().err
    assert main(["predict", "--mode", "layer", "--rates", "0.001,0.002,0.125,0.126,0.5",
                 "--cache-dir", str(tmp_path)]) == 0
    model_rows = capsys.readouterr().out.split("x dense")[1].splitlines()[1:]
    assert [r.split()[0] for r in model_rows] == ["0.001", "0.002", "0.125", "0.126", "0.50"]


def test_output_cut_short_by_a_closed_pipe_is_no_error():
    """``laudtriton predict | head -1``: no error line, the exit status of a SIGPIPE."""
    import subprocess
    import sys

    cmd = (f"{sys.executable} -m laudtriton predict --mode layer --rates 0:1:0.001 "
           "| head -1")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True,
                       text=True, timeout=300)
    assert p.stdout.startswith("hardware:") and "error" not in p.stderr, p.stderr
    assert p.returncode == 141


def test_cache_ls_says_how_many_stale_timings_it_hides(tmp_path, capsys):
    from laudtriton.ops import BlockSpec
    from laudtriton.tune.cache import TuneCache

    cache = TuneCache(tmp_path, device="cpu")
    spec = BlockSpec(64, 16, 64, 1, False, (14, 14), "spatial", 2, 0, 1)
    cache.record(spec, 0.5, {"dense": {"{}": 2e-3}, "gather": {"{}": 1e-3}})
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    assert "stale" not in capsys.readouterr().out.splitlines()[0]
    import json

    data = json.loads(cache.path.read_text())
    for e in data["entries"].values():
        e["source_hash"] = "another source"
    cache.path.write_text(json.dumps(data))
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(
        "0 entries, 0 timings; 2 stale timings hidden (--all lists them)")


def test_cache_ls_shows_the_best_time_of_each_variant(tmp_path, capsys):
    """A variant's row counts its configs and shows the fastest one's time (a failed
    config, inf, is left out): the best ms is the minimum, not the slowest config."""
    from laudtriton.ops import BlockSpec
    from laudtriton.tune.cache import TuneCache

    cache = TuneCache(tmp_path, device="cpu")
    spec = BlockSpec(64, 16, 64, 1, False, (14, 14), "spatial", 2, 0, 1)
    cache.record(spec, 0.5, {"dense": {"{}": 2e-3},
                             "gather": {'{"BLOCK":16}': 4e-3, '{"BLOCK":32}': 1e-3,
                                        '{"BLOCK":64}': math.inf}})
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    rows = {line.split()[-3]: line.split()[-2:]
            for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows == {"dense": ["1", "2.000"], "gather": ["3", "1.000"]}


def test_cache_ls_says_whether_the_file_is_there(tmp_path, capsys):
    """A directory where the cache file goes was listed as "(no file yet)", beside a
    warning that it could not be read."""
    from laudtriton.tune.cache import TuneCache

    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("0 timings (no file yet)")
    TuneCache(tmp_path, device="cpu").path.mkdir()
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(
        "0 timings (not read: not a file)")


def test_os_errors_are_one_line(tmp_path, capsys):
    afile = tmp_path / "f"
    afile.write_text("x")
    assert main(["cache", "clear", "--cache-dir", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("laudtriton cache: error:") and str(afile) in err


def test_compile_rejects_what_is_not_a_module():
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        laudtriton.compile("resnet", torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="batch 0"):
        laudtriton.compile(laudtriton.nn.laud_resnet50(input_size=64),
                           torch.randn(0, 3, 64, 64), backend="cpu", tune="off")


def test_json_files_get_the_usual_mode(tmp_path):
    from laudtriton.tune.atomic import write_json_atomic

    path = tmp_path / "c.json"
    write_json_atomic(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_bench_child_argv_carries_every_option():
    from laudtriton.bench_command import _bench_argv
    from laudtriton.cli import build_parser

    parser = build_parser()
    given = ["bench", "--model", "laud_resnet101", "--mode", "channel", "--rates", "0.5",
             "--channel-granularity", "2-2-4-4", "--batch", "3", "--threads", "1", "--reps", "5",
             "--tune", "off", "--model-only", "--repeat", "2", "--allocator", "default",
             "--csv", "x.csv", "--processes", "4", "--no-progress"]
    args = parser.parse_args(given)
    child = parser.parse_args(["bench", *_bench_argv(args)])
    # a value that starts with '-' passed as two words read as an option in the child
    neg = parser.parse_args(["bench", "--rates=-0.0,0.5"])
    assert parser.parse_args(["bench", *_bench_argv(neg)]).rates == "-0.0,0.5"
    skip = {"csv", "processes", "func", "bench_parser"}
    want = {k: v for k, v in vars(args).items() if k not in skip}
    assert {k: v for k, v in vars(child).items() if k not in skip} == want
    assert child.csv is None and child.processes == 1


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_help_texts_close_every_parenthesis_they_open(command):
    """--processes' help ended in a ')' that nothing had opened ("...; at most 100)")."""
    from laudtriton.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.choices and command in a.choices)
    for action in sub.choices[command]._actions:
        depth = 0
        for ch in action.help or "":
            depth += {"(": 1, ")": -1}.get(ch, 0)
            assert depth >= 0, (action.option_strings, action.help)
        assert depth == 0, (action.option_strings, action.help)


def test_env_reports_this_process(capsys):
    assert main(["env"]) == 0
    rows = {line[:11].strip(): line[12:] for line in capsys.readouterr().out.splitlines()}
    assert rows["torch"] == torch.__version__
    assert rows["laudtriton"] == laudtriton.__version__
    assert rows["threads"] == str(torch.get_num_threads())
    assert rows["cpu count"].split()[0] == str(os.cpu_count())
    assert rows["device"].startswith("cuda: " if torch.cuda.is_available() else "cpu: ")
    assert {"python", "triton", "cache dir", "allocator"} <= set(rows)


def test_env_says_when_this_process_may_use_fewer_cpus(capsys, monkeypatch):
    """Under taskset (or a container's cpuset) env printed the machine's count alone,
    while ``bench --threads`` refused more than the CPUs usable."""
    import laudtriton.cli as cli

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(cli, "usable_cpus", lambda: 3)
    assert main(["env"]) == 0
    rows = {line[:11].strip(): line[12:] for line in capsys.readouterr().out.splitlines()}
    assert rows["cpu count"] == "8 (3 usable by this process)"
    monkeypatch.setattr(cli, "usable_cpus", lambda: 8)
    assert main(["env"]) == 0
    rows = {line[:11].strip(): line[12:] for line in capsys.readouterr().out.splitlines()}
    assert rows["cpu count"] == "8"


def test_env_says_when_the_cache_is_disabled(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path))
    assert main(["env"]) == 0
    assert f"cache dir   {tmp_path}\n" in capsys.readouterr().out
    monkeypatch.setenv("LAUDTRITON_CACHE", "0")
    assert main(["env"]) == 0
    assert (f"cache dir   disabled by LAUDTRITON_CACHE=0 (else {tmp_path})\n"
            in capsys.readouterr().out)
    monkeypatch.setenv("LAUDTRITON_CACHE", "off")  # the value that disabled it, quoted
    assert main(["env"]) == 0
    assert "disabled by LAUDTRITON_CACHE=off (else" in capsys.readouterr().out


def test_version(capsys):
    from laudtriton import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"laudtriton {__version__}\n"


def test_demo_runs_end_to_end(capsys):
    """The README's main job, with fewer timed runs: every step, logits equal, timings."""
    assert main(["demo", "--reps", "2"]) == 0
    out = capsys.readouterr().out
    for step in ("1/4 building", "2/4 calibrating", "3/4 compiling", "4/4 timing"):
        assert step in out
    assert "compiled logits == reference logits" in out and "same top-1: True" in out
    times = [float(line.split("ms")[0].split()[-1]) for line in out.splitlines()
             if line.rstrip().endswith(("ms", "x dense)")) and " ms" in line]
    assert len(times) == 3 and all(t > 0 for t in times)
    ends = {line.index(" ms") for line in out.splitlines() if line.startswith("    ")
            and " ms" in line and line.rstrip().endswith(("ms", "x dense)"))}
    assert len(ends) == 1  # the three timing lines aligned


def test_check_mode_takes_what_laud_resnet_takes():
    from laudtriton.nn import laud_resnet50
    from laudtriton.tune.layout_options import check_mode

    for mode in ("spatial", "channel", "layer", "both", "spatial-spatial-channel-layer"):
        check_mode(mode, "--mode")
        laud_resnet50(mode=mode)  # and LaudResNet takes it
    for mode, why in (("", "unknown"), ("Spatial", "unknown"),
                      ("spatial-channel", "has 2 stages"),
                      ("spatial--layer-layer", "is not valid (an empty stage")):
        with pytest.raises(ValueError, match=re.escape(f"--mode {mode!r} {why}")):
            check_mode(mode, "--mode")


def test_cache_merge_refuses_an_out_it_would_write_over_and_makes_its_folder(tmp_path,
                                                                             capsys):
    """--out that exists but is not a cache file (a slip such as --out results.csv) is not
    written over; --out in a folder that does not exist makes the folder, as sweep makes
    its cache's (merging into ~/.cache/laudtriton on a fresh install was refused)."""
    from laudtriton.ops import BlockSpec
    from laudtriton.tune.cache import TuneCache

    spec = BlockSpec(mode="spatial", in_channels=16, width=4, out_channels=16, stride=1,
                     downsample=False, in_hw=(8, 8), granularity=2)
    c = TuneCache(tmp_path / "a")
    c.record(spec, 0.5, {"dense": {"{}": 1e-3}})
    notes = tmp_path / "results.csv"
    notes.write_text("rate,seconds\n0.5,0.001\n")
    assert main(["cache", "merge", str(c.path), "--out", str(notes)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"laudtriton cache: error: --out {notes} exists and is not a "
                          "laudtriton cache file") and err.count("\n") == 1
    assert notes.read_text() == "rate,seconds\n0.5,0.001\n"
    fresh = tmp_path / "new" / "cache" / "m.json"
    assert main(["cache", "merge", str(c.path), "--out", str(fresh)]) == 0
    assert fresh.is_file() and "m.json: 1 entry (" in capsys.readouterr().out
    for inside_a_file in (notes / "m.json", notes / "sub" / "m.json"):
        assert main(["cache", "merge", str(c.path), "--out", str(inside_a_file)]) == 2
        assert f"{str(notes)!r} is a file, not a directory" in capsys.readouterr().err
    assert main(["cache", "merge", str(c.path), "--out", str(tmp_path / "trail") + "/"]) == 2
    assert "names a directory; give a file name" in capsys.readouterr().err
    # no folder is made for a merge that fails on its inputs
    later = tmp_path / "made" / "by" / "failure" / "m.json"
    assert main(["cache", "merge", str(tmp_path / "nonexistent.json"), "--out", str(later)]) == 2
    assert "cache files not found" in capsys.readouterr().err
    assert not (tmp_path / "made").exists() and not (tmp_path / "trail").exists()


def test_cache_merge_expands_a_tilde_in_out(tmp_path, monkeypatch, capsys):
    from laudtriton.ops import BlockSpec
    from laudtriton.tune.cache import TuneCache

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    c = TuneCache(tmp_path / "a")
    c.record(BlockSpec(16, 4, 16, 1, False, (8, 8), "spatial", 2), 0.5,
             {"dense": {"{}": 1e-3}})
    monkeypatch.chdir(tmp_path)
    assert main(["cache", "merge", str(c.path), "--out", "~/.cache/laudtriton/x.json"]) == 0
    assert (tmp_path / "home" / ".cache" / "laudtriton" / "x.json").is_file()
    assert not (tmp_path / "~").exists()
    assert main(["cache", "merge", str(c.path), "--out", str(tmp_path / "m.json")]) == 0


@pytest.mark.parametrize("argv", [
    ["predict", "--rates", "1.5"], ["predict", "--model", "foo"],
    ["predict", "--granularity", "4-4-2"], ["predict", "--variants", "foo"],
    ["design", "--target-rate", "2"], ["design", "--target-rate", "0.5", "--modes", "foo"],
    ["design", "--target-rate", "0.5", "--granularities", "0"],
    ["design", "--target-rate", "0.5", "--model", "foo"],
])
def test_predict_and_design_errors_are_one_line(argv, capsys, caplog, tmp_path):
    """Every option is checked before the machine's calibration is read, which warns
    when there is none: a bad option gives its one line only."""
    nocal = tmp_path / "no-calibration"
    nocal.mkdir()
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert main([*argv, "--cache-dir", str(nocal)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"laudtriton {argv[0]}: error:")
    assert not caplog.records  # no warning line before it


def test_cache_merge_replaces_an_out_it_may_not_write_in_place(tmp_path, capsys, monkeypatch):
    """merge writes a new file and moves it over --out: a read-only --out in a writable
    directory is replaced, not refused (bench and sweep --csv, written in place, refuse
    it)."""
    from laudtriton.ops import BlockSpec
    from laudtriton.tune import paths
    from laudtriton.tune.cache import TuneCache

    cache = TuneCache(tmp_path / "a", device="cpu")
    cache.record(BlockSpec(64, 16, 64, 1, False, (14, 14), "spatial", 2, 0, 1), 0.5,
                 {"dense": {"{}": 2e-3}})
    out = tmp_path / "out.json"
    out.write_text(cache.path.read_text())
    real = os.access
    monkeypatch.setattr(paths.os, "access",  # root may write anything: a user's view
                        lambda p, mode: False if str(p) == str(out) else real(p, mode))
    assert main(["cache", "merge", str(cache.path), "--out", str(out)]) == 0
    assert main(["sweep", "--csv", str(out), "--device", "cpu"]) == 2
    assert f"--csv {str(out)!r} cannot be written (Permission denied)" in capsys.readouterr().err


def test_options_are_not_abbreviated_and_v_goes_after_the_command_too():
    """``design --granularity 4`` was silently taken for ``--granularities 4``; ``-v``
    was refused after the command name."""
    from laudtriton.cli import build_parser

    p = build_parser()
    for argv in (["design", "--granularity", "4"], ["bench", "--rate", "0.5"], ["--verb", "env"],
                 ["cache", "ls", "--dev", "cpu"]):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2
    assert p.parse_args(["design", "--granularities", "4", "--target-rate", "0.5"]
                        ).granularities == "4"
    assert p.parse_args(["env"]).verbose is False
    assert p.parse_args(["-v", "env"]).verbose is True
    assert p.parse_args(["env", "-v"]).verbose is True
    assert p.parse_args(["cache", "ls", "-v"]).verbose is True


def test_bench_out_of_memory_names_the_batch(monkeypatch, capsys):
    import laudtriton.bench as bench_mod

    def huge(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 60211200000000 bytes")
    monkeypatch.setattr(bench_mod, "bench", huge)
    assert main(["bench", "--batch", "64", "--rates", "0.5", "--model-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("laudtriton bench: error: --batch 64 with --reps 20: out of memory (")
    assert "Traceback" not in err


def _stub_row(**fields):
    """A whole-model bench row of made-up numbers, for stand-ins of ``bench.bench``."""
    from laudtriton.bench_report import BenchRow

    return BenchRow("m", "spatial", "4", 1, 0.5, "model", "s", "compiled", 1.0, 0.5, 0.5,
                    0.5, 1.0, **fields)


def _bench_stub(monkeypatch):
    """bench.bench replaced by one row, returned at once (no model is built or timed)."""
    import laudtriton.bench as bench_mod

    row = _stub_row()
    monkeypatch.setattr(bench_mod, "bench", lambda *a, **k: [row])


def test_bench_rows_record_their_reps(monkeypatch, tmp_path, capsys):
    """A table of medians of fewer than 20 runs is noted, and the CSV says how many."""
    from laudtriton.bench_report import read_csv, write_csv

    row = _stub_row(reps=3)
    write_csv([row], tmp_path / "r.csv")
    assert read_csv(tmp_path / "r.csv")[0].reps == 3
    import laudtriton.bench as bench_mod

    seen = {}
    monkeypatch.setattr(bench_mod, "bench", lambda *a, **k: seen.update(k) or [row])
    assert main(["bench", "--reps", "3", "--rates", "0.5", "--model-only"]) == 0
    assert seen["reps"] == 3 and "--reps 3: medians of fewer than 20" in capsys.readouterr().err


def test_bench_csv_that_cannot_be_written_at_the_end_is_named(monkeypatch, tmp_path, capsys):
    """A --csv checked before the run but not writable at its end (a disk that filled):
    the error named neither --csv nor the file ("[Errno 28] No space left on device")."""
    import laudtriton.bench_report as report

    _bench_stub(monkeypatch)

    def full(rows, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_csv", full)
    csv = str(tmp_path / "r.csv")
    assert main(["bench", "--rates", "0.5", "--model-only", "--csv", csv]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"laudtriton bench: error: --csv {csv!r} cannot be written (No space left on "
        "device); the table above has the results")


def test_commands_run_without_matplotlib_and_plot_says_it_needs_it(tmp_path):
    """laudtriton.plot imported matplotlib at the top, so every command (env, --version)
    loaded it, and without it `plot --help` was an error. A fresh interpreter, where
    importing matplotlib fails."""
    import subprocess
    import sys

    csv = tmp_path / "s.csv"
    csv.write_text("model,block,spec,rate,variant,seconds\n")
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"  # import matplotlib: ImportError
        "from laudtriton.cli import main\n"
        "assert main(['env']) == 0\n"
        "try:\n"
        "    main(['plot', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        f"sys.exit(main(['plot', '--from', {str(csv)!r}, '--out', {str(tmp_path / 'o')!r},"
        " '--no-predicted']))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "usage: laudtriton plot" in r.stdout and "--from" in r.stdout
    assert r.stderr.startswith(
        "laudtriton plot: error: plotting needs matplotlib, which cannot be imported here")


def test_a_subcommand_that_cannot_import_says_why(monkeypatch, capsys):
    """An import failure hid the subcommand ("invalid choice: 'plot'")."""
    import importlib

    real = importlib.import_module

    def import_module(name, *args):
        if name == "laudtriton.plot_command":
            raise ImportError("No module named 'matplotlib'")
        return real(name, *args)
    monkeypatch.setattr(importlib, "import_module", import_module)
    assert main(["plot", "--from", "x.csv", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "laudtriton plot: error: this command cannot run here: No module named" in err


@pytest.mark.parametrize("argv", [["bench", "--tune", "foo"], ["bench", "--batch", "x"],
                                  ["cache", "merge"], ["design"], []])
def test_argparse_errors_are_one_line(argv, capsys):
    """argparse printed a usage block of up to nine lines before the error."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("laudtriton") and ": error: " in err and "--help` for usage" in err


@pytest.mark.parametrize("argv,prog", [
    (["bench", "--input-size", "64"], "laudtriton bench"),
    (["env", "--bogus", "x"], "laudtriton env"),
    (["cache", "ls", "--bogus"], "laudtriton cache ls"),
    (["--bogus", "env"], "laudtriton"),  # given before the subcommand: the top's
])
def test_an_unknown_option_is_said_by_its_subcommand(argv, prog, capsys):
    """The top parser said it ("laudtriton: error: unrecognized arguments: --input-size
    64 (`laudtriton --help` for usage)"), whose help does not list bench's options."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    unknown = "--bogus" if argv[0] == "--bogus" else " ".join(
        argv[argv.index(next(a for a in argv if a.startswith("--"))):])
    assert e.value.code == 2 and capsys.readouterr().err == (
        f"{prog}: error: unrecognized arguments: {unknown} (`{prog} --help` for usage)\n")


@pytest.mark.parametrize("argv,message", [
    (["--vers"], "unrecognized arguments: --vers"),
    (["-v", "--vers", "--bogus"], "unrecognized arguments: --vers --bogus"),
    ([], "the following arguments are required: command, one of env, demo, bench, sweep, "
         "cache, plot, predict, calibrate, design, gpucheck"),
    (["-v"], "the following arguments are required: command, one of env, demo, bench, "
             "sweep, cache, plot, predict, calibrate, design, gpucheck"),
])
def test_no_command_names_the_unknown_option_first(argv, message, capsys):
    """`laudtriton --vers` (a mistyped --version) said that a command was missing, not
    that --vers is unknown."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and capsys.readouterr().err == (
        f"laudtriton: error: {message} (`laudtriton --help` for usage)\n")


@pytest.mark.parametrize("command", ["bench", "sweep", "predict", "demo"])
def test_a_batch_past_the_bound_is_refused(command, capsys):
    """bench and sweep took any --batch >= 1: one past int64 crashed inside torch with a
    C++ traceback (after bench had changed the process's allocator)."""
    assert main([command, "--batch", "100000000000000000000"]) == 2
    assert "--batch 100000000000000000000 must be in [1, 4096]" in capsys.readouterr().err


def test_demo_checks_the_cache_environment_before_any_step(monkeypatch, capsys):
    """demo built and calibrated the model (steps 1-3, ~10 s) before naming a bad
    $LAUDTRITON_CACHE."""
    monkeypatch.setenv("LAUDTRITON_CACHE", "maybe")
    assert main(["demo", "--reps", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "LAUDTRITON_CACHE='maybe'" in err


def test_bench_threads_are_set_for_the_run_and_restored(monkeypatch, capsys):
    """`bench --threads 1` left the caller's process at 1 thread, after a run and after
    a failed one (a test or a script calling main timed everything after it so)."""
    import laudtriton.bench as bench_mod

    row = _stub_row()
    during = []

    def stub(*args, **kwargs):
        during.append(torch.get_num_threads())
        if len(during) == 2:
            raise ValueError("stopped")
        return [row]

    monkeypatch.setattr(bench_mod, "bench", stub)
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2  # another count than the process's
    monkeypatch.setattr(laudtriton.bench_command, "usable_cpus", lambda: 2)
    assert main(["bench", "--threads", str(want), "--rates", "0.5", "--model-only"]) == 0
    assert torch.get_num_threads() == before
    assert main(["bench", "--threads", str(want), "--rates", "0.5", "--model-only"]) == 2
    assert torch.get_num_threads() == before
    assert during == [want, want]


def test_demo_takes_the_end_rates_zero_and_one(monkeypatch, capsys):
    """--rate is checked against [0, 1] with both ends in: 0 and 1 go on to build the
    model (stopped there), a rate just outside is refused first."""
    import laudtriton.bench as bench_mod

    def stop(*args, **kwargs):
        raise ValueError("stopped at the build")

    monkeypatch.setattr(bench_mod, "build_model", stop)
    for rate in ("0", "1"):
        assert main(["demo", "--rate", rate, "--tune", "off"]) == 2
        assert "stopped at the build" in capsys.readouterr().err
    assert main(["demo", "--rate", "-0.01", "--tune", "off"]) == 2
    assert "--rate must be in [0, 1], got -0.01" in capsys.readouterr().err


def test_bench_threads_may_be_every_usable_cpu(monkeypatch, capsys):
    """--threads is bounded by the CPUs this process may use, that count included."""
    _bench_stub(monkeypatch)
    monkeypatch.setattr(laudtriton.bench_command, "usable_cpus", lambda: 2)
    assert main(["bench", "--threads", "2", "--rates", "0.5", "--model-only"]) == 0
    assert main(["bench", "--threads", "3", "--rates", "0.5", "--model-only"]) == 2
    assert "--threads must be in [0, 2]" in capsys.readouterr().err


def test_bench_csv_with_a_tilde_is_in_the_home_directory(tmp_path, monkeypatch, capsys):
    """'--csv=~/r.csv' reaches the program unexpanded: it is $HOME/r.csv, not a file in
    a directory named '~' (which does not exist: refused)."""
    _bench_stub(monkeypatch)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--rates", "0.5", "--model-only", "--csv=~/r.csv"]) == 0
    written = tmp_path / "home" / "r.csv"
    assert written.is_file() and f"wrote {written}" in capsys.readouterr().out
    assert not (tmp_path / "~").exists()


def test_bench_notes_fewer_than_20_reps_only(monkeypatch, capsys):
    """The note on noisy medians is for --reps below 20; the default 20 (BENCHMARKS.md's)
    gets none."""
    _bench_stub(monkeypatch)
    monkeypatch.delenv("LAUDTRITON_BENCH_HANDOFF", raising=False)
    assert main(["bench", "--rates", "0.5", "--model-only"]) == 0
    assert "medians of fewer than 20" not in capsys.readouterr().err
    assert main(["bench", "--reps", "19", "--rates", "0.5", "--model-only"]) == 0
    assert "--reps 19: medians of fewer than 20" in capsys.readouterr().err


def test_bench_says_where_it_wrote_the_csv_unless_a_child(tmp_path, monkeypatch, capsys):
    """'wrote <csv>' after the run; a child process of --processes (its CSV a temporary
    file the parent reads) says nothing of it."""
    from laudtriton.bench_report import HANDOFF_ENV

    _bench_stub(monkeypatch)
    monkeypatch.delenv(HANDOFF_ENV, raising=False)
    csv = tmp_path / "r.csv"
    assert main(["bench", "--rates", "0.5", "--model-only", "--csv", str(csv)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {csv}"
    monkeypatch.setenv(HANDOFF_ENV, "1")
    assert main(["bench", "--rates", "0.5", "--model-only", "--csv", str(csv)]) == 0
    assert "wrote" not in capsys.readouterr().out and csv.is_file()


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    """Ctrl-C during a command: 'laudtriton <command>: interrupted' on stderr (a bare
    'interrupted' before session 64) and exit code 130 (128 + SIGINT, as a shell reports
    it), no traceback."""
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(laudtriton.cli, "cmd_env", interrupted)
    assert main(["env"]) == 130
    assert capsys.readouterr().err == "laudtriton env: interrupted\n"


def test_env_names_the_c_allocator(capsys, monkeypatch):
    """The allocator line: glibc's version where the C library is glibc, else 'not
    glibc'."""
    import laudtriton.runtime as runtime

    for ver, want in (("2.36", "glibc 2.36 (laudtriton bench retains"), (None, "not glibc")):
        monkeypatch.setattr(runtime, "glibc_version", lambda ver=ver: ver)
        assert main(["env"]) == 0
        rows = {line[:11].strip(): line[12:] for line in capsys.readouterr().out.splitlines()}
        assert rows["allocator"].startswith(want)


def test_an_os_error_of_a_command_is_one_line(monkeypatch, capsys):
    """An OSError a command raises (a path it cannot read or write) exits 2 with one line
    naming the command, as a ValueError does: no traceback."""
    def unreadable(args):
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(laudtriton.cli, "cmd_env", unreadable)
    assert main(["env"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("laudtriton env: error: ") and "Permission denied" in err
    assert err.count("\n") == 1
