"""Training metrics: TensorBoard on the first host, and optionally Weights & Biases or trackio.

`train.tracker = "wandb"` or `"trackio"` also sends every scalar there (project
`train.tracker_project`, run name = the workdir's name). Both are optional extras
(`pip install -e '.[wandb]'` / `'.[trackio]'`), imported only when named; trackio's API is
wandb's, so one code path serves both.
"""

from __future__ import annotations

import importlib
import os

TRACKERS = ("wandb", "trackio")


class MetricWriter:
  """Scalars by step, e.g. {"train/loss": 0.3, "eval/task_mean@384": 71.2}."""

  def __init__(self, workdir: str, config, enabled: bool = True):
    self._tensorboard = self._tracker = None
    tracker = config.train.tracker
    if tracker and tracker not in TRACKERS:
      raise ValueError(f"train.tracker {tracker!r}: use one of {', '.join(TRACKERS)}, or ''")
    if not enabled:
      return
    from tensorboardX import SummaryWriter
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
    if tracker:
      try:
        self._tracker = importlib.import_module(tracker)
      except ImportError:
        raise ValueError(f"train.tracker {tracker!r} is not installed: "
                         f"pip install -e '.[{tracker}]'") from None
      self._tracker.init(project=config.train.tracker_project,
                         name=os.path.basename(os.path.normpath(workdir)), config=config.to_dict())

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._tensorboard is None:
      return
    for name, value in values.items():
      self._tensorboard.add_scalar(name.replace("@", "_at_"), value, step)
    self._tensorboard.flush()
    if self._tracker:
      self._tracker.log(dict(values), step=step)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
    if self._tracker:
      self._tracker.finish()
