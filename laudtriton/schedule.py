"""Dispatch tables: per block, rate bucket -> (variant, kernel config) (DESIGN.md section 6).

A table is built from timings (measured now, or read from the autotune cache) and, where
nothing was measured, from predictions. ``choose(rate)`` picks the entry of the nearest
bucket; ``static`` dispatch resolves it once, from the expected rate, so that the forward
pass needs no host sync to read the rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

SOURCES = ("measured", "cached", "predicted", "rule")


@dataclass(frozen=True)
class Choice:
    """One dispatch entry: the variant, its config (as a dict), the time it scored (s; nan
    when unknown) and where that came from (measured | cached | predicted | rule)."""

    variant: str
    config: tuple = ()
    seconds: float = math.nan
    source: str = "measured"

    @property
    def config_dict(self) -> dict:
        return dict(self.config)

    @classmethod
    def make(cls, variant: str, config: dict | str | None, seconds: float, source: str):
        if isinstance(config, str):
            config = json.loads(config)
        return cls(variant, tuple(sorted((config or {}).items())), float(seconds), source)


@dataclass
class DispatchTable:
    """rate bucket (activation rate in [0, 1]) -> Choice, plus the dense time per bucket
    where it was measured (for reporting ratios)."""

    entries: dict[float, Choice] = field(default_factory=dict)
    dense_seconds: dict[float, float] = field(default_factory=dict)

    def add(self, bucket: float, timings: dict[str, dict[str, float]], source: str) -> None:
        """Add the fastest finite timing of ``timings`` ({variant: {config_key: s}})."""
        best = None
        for variant, configs in timings.items():
            for cfg, t in configs.items():
                if math.isfinite(t) and (best is None or t < best[0]):
                    best = (t, variant, cfg)
        if best is None:
            return
        self.entries[round(bucket, 4)] = Choice.make(best[1], best[2], best[0], source)
        dense = [t for t in timings.get("dense", {}).values() if math.isfinite(t)]
        if dense:
            self.dense_seconds[round(bucket, 4)] = min(dense)

    def choose(self, rate: float) -> Choice:
        """The entry of the bucket nearest to ``rate`` (ties: the lower bucket)."""
        if not self.entries:
            raise ValueError("empty dispatch table")
        bucket = min(self.entries, key=lambda b: (abs(b - rate), b))
        return self.entries[bucket]

    def variants(self) -> list[str]:
        return sorted({c.variant for c in self.entries.values()})

    def describe(self) -> str:
        """'0.25:gather 0.50:patch ...' with the source of each entry."""
        parts = []
        for b in sorted(self.entries):
            c = self.entries[b]
            cfg = "" if not c.config else json.dumps(c.config_dict, sort_keys=True)
            parts.append(f"{b:.2f}:{c.variant}{cfg}({c.source[0]})")
        return " ".join(parts)
