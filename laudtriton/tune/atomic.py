"""Files written in their place atomically and durably (``atomic_text``,
``write_json_atomic``, ``write_bytes_atomic``, ``save_figure``), the temp files a killed
write leaves (``temp_files``, ``remove_orphan_temps``), and an unusable file moved aside
(``move_aside``): the autotune cache's, and the CSV, JSON, text and image outputs of the
commands."""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEMP_MARK = ".laudtriton-"  # between a file's name and the random part of its temp files


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting it,
    even back at once, would let another thread create files under the wrong mask)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def atomic_text(path: str | Path) -> contextlib.AbstractContextManager[TextIO]:
    """A text file (UTF-8, no newline translation) written in its place atomically and
    durably (``_atomic_file``): a temp file in the same directory, flushed to disk, then
    os.replace (a crash or an interruption leaves the old file or the new one, never a
    truncated one; the temp file is removed). The file gets the mode a plain open()
    would give (0666 less the umask), not mkstemp's 0600, so a cache directory can be
    shared. A ``path`` that is a symbolic link has the file it points to replaced, the
    link kept (a cache file linked to a shared one keeps feeding it). A ``path`` that
    exists as something else than a regular file (a device, a pipe) is refused with a
    ValueError: moved over, it would be replaced."""
    return _atomic_file(path, binary=False)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as ``atomic_text`` writes text: atomically and durably,
    with a plain open()'s mode, through a symbolic link; a path that is not a regular
    file refused (ValueError). For an image or a saved model."""
    with _atomic_file(path, binary=True) as fh:
        fh.write(data)


def save_figure(fig: Figure, path: str | Path, **savefig: object) -> None:
    """A matplotlib figure written as an image at ``path`` (its format from the suffix,
    PNG without one; ``savefig``: more of ``Figure.savefig``'s options, e.g. dpi): drawn
    into memory, then ``write_bytes_atomic``, so a write cut short leaves the old image or
    none, not a truncated one. A folder at ``path`` is an IsADirectoryError, as a plain
    write's, and an OSError names ``path``, not the temp file beside it.
    """
    if Path(path).is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix[1:] or "png", **savefig)
    try:
        write_bytes_atomic(path, buf.getvalue())
    except OSError as e:  # mkstemp's names '<path>.laudtriton-<random>.tmp'
        raise OSError(e.errno, e.strerror, str(path)) from None


@contextlib.contextmanager
def _atomic_file(path: str | Path, binary: bool) -> Iterator:
    """``atomic_text``'s file, text or ``binary``."""
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a device, a pipe or a socket); "
                         "it would be replaced: give a file name")
    fd, tmp = tempfile.mkstemp(prefix=path.name + TEMP_MARK, suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with (os.fdopen(fd, "wb") if binary
              else os.fdopen(fd, "w", newline="", encoding="utf-8")) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself, where the OS allows it
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_json_atomic(path: Path, data: object, *, sort_keys: bool = True,
                      default: Callable[[object], object] | None = None) -> None:
    """Write ``data`` as JSON to ``path`` (``atomic_text``: atomically and durably, with
    a plain open()'s mode, through a symbolic link), indented; ``sort_keys`` and
    ``default`` as ``json.dump`` takes them."""
    with atomic_text(path) as fh:
        json.dump(data, fh, indent=1, sort_keys=sort_keys, default=default)


ORPHAN_AGE = 600  # seconds: a temp file of a write (a second or two) this old is left over
# the name ``_atomic_file`` gives a temp file of <name>: <name>.laudtriton-<mkstemp's 8
# random characters>.tmp, exactly (a user's "<name>.bak.tmp" or "<name>.original.tmp" is
# not one, and is never removed; before session 61 the temp files were <name>.<8>.tmp,
# which could not be told from a user's)
_TEMP_TAIL = re.compile(re.escape(TEMP_MARK) + r"[a-z0-9_]{8}\.tmp")


def temp_files(path: Path) -> list[Path]:
    """The temp files of ``atomic_text`` writes of ``path`` (a symbolic link followed)
    beside it, sorted: a write under way, or one a process killed mid-write left (the
    file itself was left whole). Named ``<name>.laudtriton-<random>.tmp``; none where the folder
    cannot be listed."""
    real = Path(os.path.realpath(path))
    try:
        found = list(real.parent.glob(glob.escape(real.name) + ".*.tmp"))
    except OSError:
        return []
    return sorted(p for p in found if _TEMP_TAIL.fullmatch(p.name[len(real.name):]))


def remove_orphan_temps(path: Path) -> int:
    """Remove the temp files of ``atomic_text`` writes of ``path`` (``temp_files``) that
    a process killed mid-write left: those older than ``ORPHAN_AGE``. Returns how many
    were removed. Call it under the file's lock, where no other write of it is under
    way (every writer of a cache file writes under its lock: ``cache_file``); the age
    keeps a temp file of a writer the lock does not reach (another host's, on a network
    file system) whose write is under way."""
    n = 0
    for tmp in temp_files(path):
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > ORPHAN_AGE:
                tmp.unlink()
                n += 1
    return n


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.unusable-<UTC time>[-n]`` beside it; returns the new
    path.

    Raises:
        OSError: if the rename fails.
    """
    stem = f"{path.name}.unusable-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    dst, n = path.with_name(stem), 1
    while dst.exists():
        dst, n = path.with_name(f"{stem}-{n}"), n + 1
    os.replace(path, dst)
    return dst
