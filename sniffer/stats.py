"""Counters keyed by (stage, reason), Zeek "weird" style.

Every stage that skips or drops something counts it here under a stable reason name; the
summary, ``--json`` and (later) Prometheus read these counters. Hot-path counters that change
per packet live as plain attributes on the stage objects and are copied in at the end.
"""

from __future__ import annotations

from collections import Counter


class Stats:
    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, stage: str, reason: str, n: int = 1) -> None:
        self.counts[(stage, reason)] += n

    def by_stage(self, stage: str) -> dict[str, int]:
        return {r: n for (s, r), n in sorted(self.counts.items()) if s == stage and n}

    def get(self, stage: str, reason: str) -> int:
        return self.counts.get((stage, reason), 0)
