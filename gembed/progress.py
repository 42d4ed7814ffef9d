"""Progress bars on stderr (tqdm), or nothing when disabled or when there is a single step."""

from __future__ import annotations

import sys


class _NoBar:
  def update(self, n):
    pass

  def close(self):
    pass


def progress_bar(total: int, enabled: bool = True, desc: str | None = None, unit: str = "it"):
  if not enabled or total < 2:
    return _NoBar()
  from tqdm import tqdm
  return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
