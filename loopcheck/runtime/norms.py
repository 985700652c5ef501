"""The gradient norms that clipping returned, per optimizer, over the steps, in bounded memory.

Pure Python. Each point is a step's norm before clipping (what ``clip_grad_norm_`` returned),
after it (``min(before, max_norm)``, what clipping leaves) and the ``max_norm``. A series keeps
at most ``2 * limit`` buckets: when it grows past that, neighbouring buckets merge (each then
covers twice as many steps, keeping the smallest, the largest and the last value), so a million
steps cost what a thousand do.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Bucket:
    """The steps ``first``..``last`` of one optimizer: norms before and after clipping."""

    first: int
    last: int
    low: float
    high: float
    value: float  # the last step's norm before clipping
    after_low: float
    after_high: float
    after: float
    max_norm: float

    def merge(self, other: Bucket) -> None:
        self.last = other.last
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        self.value = other.value
        self.after_low = min(self.after_low, other.after_low)
        self.after_high = max(self.after_high, other.after_high)
        self.after = other.after
        self.max_norm = other.max_norm


@dataclass
class Series:
    """One optimizer's norms, downsampled as they come."""

    limit: int = 512
    width: int = 1  # steps per bucket
    buckets: list[Bucket] = field(default_factory=list)

    def add(self, step: int, before: float, max_norm: float) -> None:
        after = min(before, max_norm)
        buckets = self.buckets
        if buckets and step < buckets[-1].first + self.width:
            last = buckets[-1]
            last.last = step
            last.value = before
            last.after = after
            last.max_norm = max_norm
            if before < last.low:
                last.low = before
            if before > last.high:
                last.high = before
            if after < last.after_low:
                last.after_low = after
            if after > last.after_high:
                last.after_high = after
            return
        start = step - step % self.width
        buckets.append(Bucket(start, step, before, before, before, after, after, after, max_norm))
        if len(buckets) > 2 * self.limit:
            self._halve()

    def _halve(self) -> None:
        self.width *= 2
        merged: list[Bucket] = []
        for bucket in self.buckets:
            if merged and bucket.first < merged[-1].first + self.width:
                merged[-1].merge(bucket)
            else:
                bucket.first -= bucket.first % self.width
                merged.append(bucket)
        self.buckets = merged


@dataclass
class Norms:
    """The series of every optimizer that clipped, by optimizer index."""

    series: dict[int, Series] = field(default_factory=dict)

    def add(self, optimizer: int, step: int, before: float, max_norm: float) -> None:
        series = self.series.get(optimizer)
        if series is None:
            series = self.series[optimizer] = Series()
        series.add(step, before, max_norm)
