"""A progress display on stderr for long commands (``sweep``, ``bench``): on a terminal
tqdm's bar when tqdm is importable, else one stderr line rewritten in place (tqdm is
optional: the GPU machines this project runs on may lack it). Where stderr is not a
terminal (a log file, CI), the line is not rewritten and tqdm is not used (its bar
rewrites itself with carriage returns there too: a log got one line of every redraw): a
whole line is written at the first item, then at most every ``LOG_EVERY_S`` seconds,
and at the last item."""

from __future__ import annotations

import sys
import time

LOG_EVERY_S = 10.0  # seconds between two lines where stderr is not a terminal


def _is_tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or odd stream
        return False


class Progress:
    """On a terminal tqdm if importable, else one stderr line with an ETA; where stderr
    is not a terminal that line whole, fewer (never tqdm); silent when disabled.

    total: the items to come; desc: the bar's label ("sweep"); unit: what an item is
    ("item")."""

    def __init__(self, total: int, enabled: bool, desc: str, unit: str) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.desc = desc
        self.timed = 0  # items measured (not found cached): the ETA's rate
        self.enabled, self.bar = enabled and total > 0, None
        self.tty = _is_tty()
        self.shown = -LOG_EVERY_S  # when the last line was written (not on a terminal)
        if self.enabled and self.tty:  # off a terminal tqdm's '\r' redraws made one line
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                                mininterval=0.1)
            except ImportError:
                self.bar = None

    def update(self, note: str = "", timed: bool = True, n: int = 1) -> None:
        """Count n items done and show them: tqdm's bar with ``note`` as its postfix, else
        the stderr line rewritten (desc done/total, seconds elapsed, the ETA in seconds,
        ``note`` cut to 40 characters), or off a terminal that line whole, at most every
        ``LOG_EVERY_S`` seconds; counted but not shown when disabled. timed: the
        items were measured, not found cached. The ETA takes the time per measured item
        for every item left (an item found cached takes none: counted in, the ETA of a
        resumed sweep read 1 s for a 17 s run); none before one is measured. n: a step
        that takes as long as n items counts as n (bench's whole-model timings).
        tqdm's bar counts cached items too, but its rate and ETA are of measured ones."""
        self.done += n
        self.timed += n if timed else 0
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            if not timed:  # counted as tqdm's ``initial`` (a resumed bar's start) and
                # out of its next rate sample (n - last_print_n): tqdm's rate and ETA are
                # of measured items, as the line's below (counted in, 8 cached items and
                # 1 measured in 10 s read an ETA of 1 s for an item of 10 s)
                self.bar.n += n
                self.bar.initial += n
                self.bar.last_print_n += n
                n = 0  # update(0): drawn when tqdm's interval has passed, as any update
            self.bar.update(n)
            return
        el = time.perf_counter() - self.t0
        if not self.tty and el - self.shown < LOG_EVERY_S and self.done < self.total:
            return
        eta = (f"{el / self.timed * (self.total - self.done):.0f}s" if self.timed else "?")
        text = f"{self.desc} {self.done}/{self.total} {el:.0f}s elapsed, ETA {eta} "
        if self.tty:
            sys.stderr.write(f"\r{text}{note[:40]:<40}")
        else:
            self.shown = el
            sys.stderr.write(f"{text}{note[:40]}".rstrip() + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """End the display: close tqdm's bar, or end the stderr line; nothing when disabled
        or closed already."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.tty:  # off a terminal every line is ended already
            sys.stderr.write("\n")
        self.bar, self.enabled = None, False
