"""`PeakRss`: the peak resident set size of this process while a block runs, sampled in a thread."""

import os
import threading
import time

__all__ = ["PeakRss"]


def _rss_bytes():
  """Resident set size of this process, or None where /proc is not there."""
  try:
    with open("/proc/self/statm") as statm:
      return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return None


class PeakRss:
  """Samples the RSS in a thread while the block runs; `.delta_mib` is the peak above the RSS at entry."""

  def __init__(self, interval=5e-4):
    self._interval = interval
    self._stop = threading.Event()
    self.delta_mib = None

  def __enter__(self):
    self._baseline = self._peak = _rss_bytes()
    if self._baseline is not None:
      self._thread = threading.Thread(target=self._sample, daemon=True)
      self._thread.start()
    return self

  def _sample(self):
    while not self._stop.is_set():
      self._peak = max(self._peak, _rss_bytes() or 0)
      time.sleep(self._interval)

  def __exit__(self, *exc):
    if self._baseline is None:
      return
    self._stop.set()
    self._thread.join()
    self._peak = max(self._peak, _rss_bytes() or 0)
    self.delta_mib = (self._peak - self._baseline) / 2**20

