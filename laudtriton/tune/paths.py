"""The commands' path options: checking them before any work (an empty path, a cache
folder, an output file) and making the folders a command fills (``make_writable_dir``),
removed again when the command is refused afterwards (``remove_if_empty``). The sweep and
cache, bench, plot, predict, design, calibrate and gpucheck commands use them; their errors
are one-line ValueErrors naming the option, as ``options``' are.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .atomic import TEMP_MARK
from .keys import check_dir, default_cache_dir


def check_nonempty(path: str | None, flag: str) -> None:
    """A ValueError naming ``flag`` when the path given with it is '' (or blank): an empty
    path would silently mean the current directory."""
    if path is not None and not path.strip():
        raise ValueError(f"{flag} {path!r} is empty; give a path")


def check_cache_dir(path: str | None, flag: str = "--cache-dir", read: bool = False) -> None:
    """A ValueError naming ``flag`` when ``path`` is empty, or names a file or lies inside
    one (None: the default directory; ``keys.check_dir``). read: the command only reads
    the cache and the calibration there, so a directory that does not exist (a mistyped
    path) is refused too, rather than read as an empty cache on default numbers; so is
    one named by $LAUDTRITON_CACHE_DIR when ``path`` is None (the default directory
    itself may not exist yet: then the commands say they run uncalibrated)."""
    if path is not None:
        unset = "leave the option out"
        check_dir(path, flag, f", or {unset} for the default")
        folder = Path(path).expanduser()
    elif read and os.environ.get("LAUDTRITON_CACHE_DIR"):
        flag, path, unset = "LAUDTRITON_CACHE_DIR", os.environ["LAUDTRITON_CACHE_DIR"], "unset it"
        folder = default_cache_dir()  # which checks the variable as check_dir does
    else:
        return
    if read and not folder.is_dir():
        raise ValueError(f"{flag} {path!r} does not exist; give the directory that holds "
                         "the autotune cache and calibration (`laudtriton sweep` and "
                         f"`laudtriton calibrate` write them), or {unset} for the default")


def make_writable_dir(path: str | None, flag: str) -> str | None:
    """The directory ``path`` (given with ``flag``; None: nothing to do) made if missing,
    and a file written in it, before any work, for a command whose point is to fill it:
    a ValueError naming ``flag`` otherwise (no permission, a read-only file system).
    Returns the outermost folder it made (None: every one existed), for
    ``remove_if_empty`` when the command is refused afterwards (when it is refused
    here, the folders it made are removed)."""
    if path is None:
        return None
    made = None
    try:
        # joined, not normalised: "link/.." is the link target's parent, as the kernel
        # resolves it (and as the cache then writes there)
        folder = os.path.join(os.getcwd(), os.path.expanduser(path))
        _, made = nearest_existing(folder)
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        remove_if_empty(made)  # a folder made, but not writable after all
        link = dangling_link(folder)  # makedirs said "File exists" of a missing folder
        if link is not None:
            raise ValueError(f"{flag} {path!r}: {link!r} is a symbolic link to the missing "
                             f"{os.readlink(link)!r}; make that folder, or remove the link"
                             ) from None
        raise ValueError(f"{flag} {path!r} cannot be made or written ({e.strerror or e})"
                         ) from None
    return made


def dangling_link(path: str) -> str | None:
    """The nearest of ``path`` and the folders above it that is a symbolic link to
    something missing, or None when there is none."""
    while True:
        if os.path.islink(path) and not os.path.exists(path):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def nearest_existing(path: str) -> tuple[str, str | None]:
    """(the nearest of ``path`` and the folders above it that exists, the outermost one
    that does not: None when ``path`` exists)."""
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return path, missing


def remove_if_empty(top: str | None) -> None:
    """Remove the folders ``make_writable_dir`` made under ``top`` (and ``top``) if they
    hold no file: a command refused after making them leaves nothing behind."""
    if top is None:
        return
    for folder, _, files in sorted(os.walk(top), reverse=True):  # deepest first
        if files:
            return
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def check_output_path(path: str | None, flag: str, replaced: bool = False,
                      new_dirs: bool = False) -> None:
    """Fail before any measuring when ``path`` (given with ``flag``) cannot be written as
    a file: empty, a directory (or a name ending in a slash), something else than a
    regular file (a device, a pipe or a socket: a file written beside it and moved over it
    would replace ``/dev/null`` itself), in a directory that does not exist (unless
    ``new_dirs``: the caller makes it; then only a file where a directory should be fails)
    or where the temp file its writer makes beside it (``tune.atomic``: its name,
    ``TEMP_MARK``, a random part) cannot be made, or an existing file without write
    permission (unless ``replaced``: the file is written elsewhere and moved over it,
    which needs only the directory). A symbolic link is checked as the file it points
    to, which the writers write (a dangling link into a missing directory failed after
    the measuring). A name ending in '.' or '..' ('x/.') names a directory too."""
    if path is None:
        return
    check_nonempty(path, flag)
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give a file name")
    # (abspath and Path drop a final slash or '.': a file 'x' was made, or replaced)
    if path.endswith((os.sep, "/")) or os.path.basename(path) in (".", ".."):
        raise ValueError(f"{flag} {path!r} names a directory; give a file name")
    real = os.path.realpath(path)
    if os.path.exists(real) and not os.path.isfile(real):
        raise ValueError(f"{flag} {path!r} is not a regular file (a device, a pipe or a "
                         "socket); give a file name")
    parent = os.path.dirname(real)
    if new_dirs and not os.path.isdir(parent):
        above, _ = nearest_existing(parent)
        if not os.path.isdir(above):
            raise ValueError(f"{flag} {path!r}: {above!r} is a file, not a directory")
        return
    if not os.path.isdir(parent):
        why = "is a file" if os.path.exists(parent) else "does not exist"
        raise ValueError(f"{flag} {path!r}: the directory {parent!r} {why}")
    try:  # the writer's temp file can be made there (``tune.atomic``, named after the
        # file: a name that fits but whose temp name is too long failed after the run)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(real) + TEMP_MARK, suffix=".tmp",
                                   dir=parent)
        os.close(fd)
        os.remove(tmp)
        if not replaced and os.path.exists(real) and not os.access(real, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise ValueError(f"{flag} {path!r} cannot be written ({e.strerror or e})") from None


def check_not_cache_file(path: str | os.PathLike | None, flag: str,
                         cache_dir: str | os.PathLike) -> None:
    """A ValueError naming ``flag`` when the output file ``path`` is (or links to) a JSON
    or lock file in the cache folder ``cache_dir``: an autotune cache of any device, a
    calibration file or a lock. A CSV written there replaced the timings or the
    calibration (the next command read a corrupt file and ignored it)."""
    if path is None:
        return
    real = Path(os.path.realpath(path))
    if real.suffix in (".json", ".lock") and real.parent == Path(os.path.realpath(cache_dir)):
        raise ValueError(f"{flag} {os.fspath(path)!r} is a file of the autotune cache folder "
                         f"({real}); the output would write over it: give another path")
