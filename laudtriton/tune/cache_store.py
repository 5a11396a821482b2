"""Where a TuneCache keeps its records (DESIGN.md section 5): its file, read again only
when it changed on disk, and records and annotations merged into it under the file lock
(temp file + ``os.replace``); in memory when the file cannot take them (an unwritable
directory or a full disk, a file that cannot be read or holds another device's timings, a
symbolic link into a missing folder, another process holding the lock), said once; and
clearing it.

``CacheStore`` is the base of ``cache.TuneCache``, which sets its attributes and says which
entries there are (``_all``). The file itself (reading, validating, writing, the lock) is
``cache_file``'s.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

from . import cache_file
from .atomic import move_aside
from .cache_file import (
    LockTimeout,
    UnusableCacheFile,
    annotate_entries_into,
    file_lock,
    is_valid_entry,
    lock_path_of,
    merge_entries_into,
    parse_cache,
    read_entries,
    write_cache_file,
)

log = logging.getLogger("laudtriton")


def read_regular(path: Path) -> bytes:
    """The bytes of the file ``path``, which must be a regular file (reading a pipe
    waits for a writer: a cache read under the lock hung, and every other writer of the
    cache with it).

    Raises:
        FileNotFoundError: if there is none.
        OSError: if it cannot be read, or is not a regular file.
    """
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return path.read_bytes()


class CacheStore:
    """The file of one device's TuneCache, and the records in memory not (yet) in it.

    The base of ``cache.TuneCache``, which says what the file is (its ``path`` in
    ``dir``, the ``device`` fingerprint it holds, whether it is ``enabled``) and gives
    every entry, the file's and those in memory (``_all``).
    """

    def __init__(self, dir: Path, path: Path, device: str, enabled: bool) -> None:
        self.enabled = enabled
        self.dir = dir
        self.path = path
        self.device = device
        self._memory: dict[str, dict] = {}  # records not (yet) on disk
        # annotations (``annotate``) of entries on disk not yet written: {key: meta}, merged
        # into the file's entry under the lock (never its timings as this process read them)
        self._notes: dict[str, dict] = {}
        # the file's entries as last read, with its (inode, mtime, size) then: a write
        # replaces the file (a new inode), and file times are coarse (a few ms)
        self._loaded: tuple[tuple[int, int, int] | None, dict[str, dict]] = (None, {})
        self._warned_unwritable = False
        self._warned_foreign = False
        self._warned_unreadable = False
        self.unsaved_why: str | None = None  # why the last unsaved record stayed in memory
        # where the last ``clear`` moved an unusable file (not deleted), and why: (aside
        # path, "is corrupt (...)" or "has schema ..."); None when it moved none
        self.cleared_aside: tuple[Path, str] | None = None

    def _all(self) -> dict[str, dict]:
        raise NotImplementedError  # TuneCache's

    @property
    def lock_path(self) -> Path:
        """The cache file's lock file (``<file>.lock`` beside it; beside the file a
        symbolic link points to: ``cache_file.lock_path_of``)."""
        return lock_path_of(self.path)

    def _lock(self):
        """The cache file's inter-process lock (on ``lock_path``)."""
        return file_lock(self.lock_path)

    def _disk(self) -> dict[str, dict]:
        if not self.enabled:
            return {}
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return {}
        if self._loaded[0] != stamp and not stat.S_ISREG(st.st_mode):  # a read of a
            # pipe waits for a writer that may never come (``read_regular``)
            log.warning("autotune cache %s is not a regular file (a pipe, a directory); "
                        "ignoring it", self.path)
            self._loaded = (stamp, {})
        if self._loaded[0] != stamp:
            self._loaded = (stamp, read_entries(self.path, self.device))
        return self._loaded[1]

    @property
    def saved(self) -> bool:
        """Whether every record and annotation so far is in the cache file (False when
        the cache is disabled or its directory unwritable)."""
        return self.enabled and not self._memory and not self._notes

    def _save(self) -> None:
        """Merge the records in memory into the cache file (atomic, under the lock), or
        keep them in memory and say why once (``record``)."""
        if not self.enabled:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            missing = self.missing_link_folder()
            if missing is not None:  # its lock would make that folder, wherever it is
                self._unsaved(f"{self.path} is a link into the missing folder {missing}",
                              "_warned_unwritable", "autotune cache %s is a symbolic link "
                              "into the missing folder %s; results are kept in memory",
                              self.path, missing)
                return
            with self._lock():
                try:
                    raw = read_regular(self.path)
                except FileNotFoundError:
                    raw = None
                except OSError as e:  # exists, but unreadable: not ours to replace
                    self._unsaved(f"{self.path} cannot be read ({e.strerror or e})",
                                  "_warned_unreadable", "cannot read the autotune cache %s "
                                  "(%s); not writing over it: results are kept in memory "
                                  "only", self.path, e)
                    return
                found, entries, repeated = None, {}, []
                if raw is not None:
                    try:
                        data = parse_cache(raw, repeated)
                    except UnusableCacheFile as e:  # its bytes are kept, under another name
                        aside = move_aside(self._real_path())  # (a link's target: the link
                        # stays, and feeds the new file)
                        log.warning("autotune cache %s %s; moved it to %s, a new file is "
                                    "written", self.path, e, aside.name)
                    else:  # every entry, those no reader can use too (kept as they are)
                        found, entries = data.get("device"), data["entries"]
                if repeated:  # (load_cache_file says so when it reads; a record may not)
                    log.warning("autotune cache %s: %d name(s) given twice in one JSON "
                                "object (the first: %r); this write keeps the last of each",
                                self.path, len(repeated), repeated[0][:200])
                if entries and found != self.device:  # two devices, one file name
                    self._unsaved(f"{self.path} holds timings of device {found!r}",
                                  "_warned_foreign", "autotune cache %s holds timings of "
                                  "device %r, not %r; not writing over them: results are "
                                  "kept in memory only", self.path, found, self.device)
                    return
                # a record replaces an entry of its key no reader can use; the file's
                # other entries stay as they are, those no reader can use too
                entries = {k: e for k, e in entries.items()
                           if k not in self._memory or is_valid_entry(e)}
                annotate_entries_into(entries, self._notes)
                merge_entries_into(entries, self._memory)
                write_cache_file(self.path, self.device, entries)  # (temps of killed
                # writes removed first: ``cache_file.write_cache_file``)
            self._memory.clear()
            self._notes.clear()
            self._loaded = (None, {})
        except LockTimeout:  # another process holds the lock
            self.unsaved_why = (f"another process held the lock {self.lock_path} for "
                                f"{cache_file.LOCK_TIMEOUT} s")
            log.warning("autotune cache %s: another process held its lock %s for %g s; "
                        "results are kept in memory, a later record tries again",
                        self.path, self.lock_path, cache_file.LOCK_TIMEOUT)
        except OSError as e:  # not only a read-only folder: a full disk, an I/O error
            self._unsaved(f"cannot write in {self.dir} ({e.strerror or e})",
                          "_warned_unwritable",
                          "cannot write the autotune cache in %s (%s); results are kept in "
                          "memory (a later record tries again)", self.dir, e)

    def _unsaved(self, why: str, warned: str, message: str, *args: object) -> None:
        """Keep the records in memory because of ``why`` (``unsaved_why``), and log
        ``message % args`` the first time the flag named ``warned`` is not yet set."""
        self.unsaved_why = why
        if not getattr(self, warned):
            log.warning(message, *args)
            setattr(self, warned, True)

    def _real_path(self) -> Path:
        """The cache file, a symbolic link followed (as its writes and its lock follow
        it): a file linked to a shared one is that file."""
        return Path(os.path.realpath(self.path))

    def missing_link_folder(self) -> Path | None:
        """The folder a cache file that is a symbolic link points into, when that folder
        does not exist (the cache then keeps its records in memory); None otherwise."""
        folder = self._real_path().parent
        return None if folder.is_dir() else folder

    def unwritable_why(self) -> str | None:
        """Why a record would stay in memory rather than reach the file, found by reading
        it (no lock taken, nothing written), said of the file (a clause after its path:
        "holds timings of device ..."): a file that is not a regular file or cannot be
        read, or one holding another device's timings (``_save`` writes over none of
        them); None otherwise (a corrupt file or one of another schema is moved aside by
        the first write; a full disk or a lock held too long show only when writing; a
        symbolic link into a missing folder is ``missing_link_folder``'s, which the
        sweep command checks first, with its own advice)."""
        if not self.enabled:
            return None
        try:
            raw = read_regular(self.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"cannot be read ({e.strerror or e})"
        try:
            data = parse_cache(raw)
        except UnusableCacheFile:
            return None
        found = data.get("device")
        if data["entries"] and found != self.device:
            return f"holds timings of device {found!r}, not {self.device!r}"
        return None

    def clear(self) -> int:
        """Delete every entry (file and memory); returns how many entries there were. A
        file that is not a cache of this schema (corrupt, or another schema) is moved
        aside, not deleted (``cleared_aside`` says where and why; 0 entries counted).

        Raises:
            ValueError: if the file holds another device's timings (two device names
                with one file name) or cannot be read, which ``record`` does not write
                over either, or cannot be deleted (a read-only directory, another
                process holding the lock): nothing is deleted then.
        """
        # the entries in memory; a file's are counted below, from the file read under the
        # lock (``_all`` would read it once more, and warn of a corrupt one: "the next
        # write moves it aside", where clear moves it)
        n = len(self._memory)
        self.cleared_aside = None
        # under the lock: a record() between its read and its write would write the
        # entries back (no file: nothing to clear, and no lock file to make, in a folder
        # that may be read-only or missing)
        if self.enabled and self._real_path().exists():
            try:
                with self._lock():
                    try:
                        raw = read_regular(self.path)
                    except FileNotFoundError:
                        raw = None
                    except OSError as e:
                        raise ValueError(f"{self.path} cannot be read ({e.strerror or e}); "
                                         "not deleting it") from None
                    try:
                        data = parse_cache(raw) if raw is not None else {"entries": {}}
                    except UnusableCacheFile as e:  # not ours to delete: kept under another name
                        aside = move_aside(self._real_path())
                        self.cleared_aside = (aside, str(e))
                        log.warning("autotune cache %s %s; moved it to %s, not deleted",
                                    self.path, e, aside.name)
                    else:
                        found = data.get("device")
                        if data["entries"] and found != self.device:
                            raise ValueError(f"{self.path} holds timings of device {found!r}, "
                                             f"not {self.device!r}; not deleting them")
                        # the file's entries no reader can use are deleted too: count them
                        n = len(set(data["entries"]) | set(self._memory))
                        with contextlib.suppress(FileNotFoundError):  # a link's target
                            self._real_path().unlink()  # (the entries it counted)
            except LockTimeout:
                raise ValueError(f"another process holds the lock of {self.path} (waited "
                                 f"{cache_file.LOCK_TIMEOUT} s); nothing deleted") from None
            except OSError as e:  # the file named: the lock beside it, say, a directory
                where = f": {e.filename}" if e.filename else ""
                raise ValueError(f"cannot clear the autotune cache in {self.dir} "
                                 f"({e.strerror or e}{where}); nothing deleted") from None
        self._memory.clear()
        self._notes.clear()
        self._loaded = (None, {})
        return n
