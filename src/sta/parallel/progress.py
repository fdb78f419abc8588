"""Progress reports from the leader: count, percentage, rate and ETA."""

import logging
import time

log = logging.getLogger("sta.progress")


class Progress:
    """Log ``label: done/total (pct), rate/s, ETA`` at most every ``interval`` seconds."""

    def __init__(self, total, label, unit="items", interval=5.0, enabled=True):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.interval = interval
        self.enabled = enabled
        self.t0 = time.time()
        self.last = 0.0
        self.done = 0

    def update(self, done, force=False):
        self.done = min(int(done), self.total)
        now = time.time()
        if not self.enabled or (not force and now - self.last < self.interval and self.done < self.total):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        log.info(" %s: %d/%d %s (%.0f%%), %.2f %s/s, ETA %s", self.label, self.done, self.total, self.unit, pct,
                 rate, self.unit, _fmt(eta))

    def finish(self):
        if self.done < self.total or self.last == 0.0:
            self.update(self.total, force=True)
        return time.time() - self.t0


def _fmt(seconds):
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
