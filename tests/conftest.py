import os

import torch

# Every Triton kernel test runs under the interpreter (GPU.md section 1), on CPU tensors,
# on a machine with a GPU too (there the kernels are checked on the device by
# ``laudtriton gpucheck``); the variable must be set before any kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def planned(monkeypatch):
    """The specs ``plan_block`` is called for (one per distinct block tuned)."""
    import sys

    compile_module = sys.modules["laudtriton.compile"]  # (the package's name is the function)
    calls = []
    real = compile_module.plan_block
    monkeypatch.setattr(compile_module, "plan_block",
                        lambda spec, *a, **k: calls.append(spec) or real(spec, *a, **k))
    return calls


@pytest.fixture
def read_only_folders(monkeypatch):
    """Every folder fails the commands' write test (``tempfile.TemporaryFile`` raises
    "Read-only file system"). Returns forbid(obj, name, what): ``obj.name`` then raises
    "<what> before checking the folder" if called (the work ran before the refusal)."""
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)

    def forbid(obj, name: str, what: str) -> None:
        def called(*args, **kwargs):
            raise AssertionError(f"{what} before checking the folder")
        monkeypatch.setattr(obj, name, called)
    return forbid


class Killed(Exception):
    """Raised by ``sigterm_guard``'s SIGTERM handler: the code under test installed none."""


@pytest.fixture
def sigterm_guard():
    """A SIGTERM handler raising ``Killed`` (yielded) for the test, the one before it
    restored after: the default handler would end the test process, and a test checks
    that a command put the guard's handler back (``pytest.raises(sigterm_guard)``)."""
    import signal

    def killed(signum, frame):
        raise Killed
    before = signal.signal(signal.SIGTERM, killed)
    try:
        yield Killed
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.fixture
def sigterm_self():
    """A function (any arguments, to stand in for a patched one) that sends this process
    SIGTERM and runs on until the handler raises, between two bytecodes, at once."""
    import os
    import signal

    def killed_here(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000_000):
            pass
        raise AssertionError("SIGTERM raised nothing")
    return killed_here


@pytest.fixture
def ctrl_c_at_second_item(monkeypatch):
    """``tune.sweep.time_variants`` patched so that its second call raises
    KeyboardInterrupt (Ctrl-C while a sweep times its second item); returns the list of
    calls so far, which a test clears to start counting again."""
    import laudtriton.tune.sweep as sweep_mod

    real, calls = sweep_mod.time_variants, []

    def second_interrupts(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(sweep_mod, "time_variants", second_interrupts)
    return calls


def use_two_blocks_a_stage(mp: pytest.MonkeyPatch) -> None:
    """Make ``bench``'s LAUD-ResNet-50 and -101 (``bench.MODELS``, which ``bench`` and the
    benchmark scripts build by name) networks of two blocks a stage, with ``mp``: the same
    8 distinct block shapes (a stage's first block and the others) in 8 blocks instead
    of 16 and 33, each block's row and check as in the full network. Building,
    calibrating and compiling the full network is most of a short bench's time."""
    import functools

    import laudtriton.bench as bench
    from laudtriton.nn.resnet import LaudResNet

    for name in ("laud_resnet50", "laud_resnet101"):
        mp.setitem(bench.MODELS, name, functools.partial(LaudResNet, (2, 2, 2, 2)))


@pytest.fixture
def two_blocks_a_stage(monkeypatch):
    """``use_two_blocks_a_stage`` for one test."""
    use_two_blocks_a_stage(monkeypatch)


@pytest.fixture(scope="session")
def two_blocks_patch():
    """``use_two_blocks_a_stage`` itself, for a fixture of a wider scope than a test's
    (it patches within a ``pytest.MonkeyPatch.context()`` of its own)."""
    return use_two_blocks_a_stage
