"""Progress lines for long work: count, rate and ETA, at most every few seconds."""
from __future__ import annotations

import logging
import time


class Progress:
    """Log ``<what> done/total (rate/s, ETA)`` as work advances, throttled to one line per ``every`` s.

    Parameters
    ----------
    total : int
        Units of work (images, particles...).
    what : str
        What is being done, e.g. ``"back-projected"``.
    unit : str
        Name of one unit, plural, e.g. ``"images"``.
    logger : logging.Logger
    every : float
        Seconds between lines.
    final : bool
        Always log a line when the last unit is done (off when the caller logs its own summary).
    """

    def __init__(self, total: int, what: str, unit: str, logger: logging.Logger, every: float = 5.0,
                 final: bool = True):
        self.total, self.what, self.unit, self.log, self.every = total, what, unit, logger, every
        self.final = final
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def update(self, n: int) -> None:
        """Record ``n`` more units."""
        self.done += n
        now = time.monotonic()
        if now - self.last < self.every and (self.done < self.total or not self.final):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.log.info("%s %d/%d %s (%.0f %s/s, ETA %.0f s)", self.what, self.done, self.total, self.unit, rate,
                      self.unit, eta)
