"""Thin Orbax layer: the training CheckpointManager, restoring the newest readable checkpoint,
params-only loads, standalone params dirs.

A training checkpoint is a Composite of items:
  params     the model parameters (what encode/eval/soup/export load on their own)
  opt_state  the optimizer state
  train      step and RNG key
  data       every host's input-iterator position (gembed.data.iterator_handler; optional)
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"


def absolute(path: str) -> str:
  """Absolute local path; URLs (gs://...) unchanged. Workdirs may live on GCS."""
  return str(path) if "://" in str(path) else os.path.abspath(path)


def sync_hosts(name: str) -> None:
  """Every process waits here until all have arrived: files process 0 writes are then there for
  all (a no-op on one host)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def make_manager(workdir: str, keep: int, async_save: bool = True,
                 extra_handlers: dict | None = None) -> ocp.CheckpointManager:
  handlers = {
      "params": ocp.StandardCheckpointHandler(),
      "opt_state": ocp.StandardCheckpointHandler(),
      "train": ocp.StandardCheckpointHandler(),
      **(extra_handlers or {}),
  }
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
  )
  return ocp.CheckpointManager(
      absolute(os.path.join(workdir, CHECKPOINT_SUBDIR)),
      item_names=tuple(handlers), item_handlers=handlers, options=options)


def checkpoint_steps(workdir: str) -> list[int]:
  """Finished checkpoint steps in a workdir (in-progress temporaries are ignored)."""
  root = epath.Path(absolute(os.path.join(workdir, CHECKPOINT_SUBDIR)))
  if not root.is_dir():
    return []
  return sorted(ocp.utils.checkpoint_steps(root))


def load_workdir_params(workdir: str, step: int) -> dict:
  """Only the `params` item of one training checkpoint, as host numpy arrays."""
  path = os.path.join(absolute(workdir), CHECKPOINT_SUBDIR, str(step), "params")
  if not epath.Path(path).is_dir():
    raise FileNotFoundError(f"{workdir}: no checkpoint for step {step} (have {checkpoint_steps(workdir)})")
  return load_params(path)


def save_params(path: str, params) -> None:
  """Parameters alone, as a standalone Orbax checkpoint (soups, imported models)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(absolute(path), params, force=True)


def load_params(path: str) -> dict:
  """Host numpy parameters, whatever topology saved them (a two-host or pod checkpoint reads
  on one CPU): the restore target is the saved shapes on this process's first device."""
  path = absolute(path)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  saved = ocp.StandardCheckpointHandler().metadata(epath.Path(path))  # the tree's metadata only
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved,
      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, target)
  return jax.tree_util.tree_map(np.asarray, restored)


UNREADABLE_SUFFIX = ".unreadable"


class IncompatibleCheckpointError(ValueError):
  """A readable checkpoint of a different model: an error, never a reason to fall back."""


def _param_mismatch(manager: ocp.CheckpointManager, step: int, abstract_params) -> str | None:
  """The first parameter whose presence or shape differs between checkpoint `step` and
  `abstract_params`; None when they agree. Reads metadata only."""
  def shapes(tree):
    return {jax.tree_util.keystr(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  saved, wanted = shapes(manager.item_metadata(step)["params"]), shapes(abstract_params)
  for name in sorted(set(saved) | set(wanted)):
    if saved.get(name) != wanted.get(name):
      return (f"parameter {name} is {saved.get(name, 'missing')} there, "
              f"{wanted.get(name, 'missing')} in this run")
  return None


def _move_aside(root: epath.Path, step: int) -> epath.Path:
  target, n = root / f"{step}{UNREADABLE_SUFFIX}", 1
  while target.exists():
    n += 1
    target = root / f"{step}{UNREADABLE_SUFFIX}.{n}"
  (root / str(step)).rename(target)
  return target


def restore_newest_readable(manager: ocp.CheckpointManager, abstract_params, restore_args):
  """(step, restored items) of the newest checkpoint that reads, or (None, None) when none does.

  A checkpoint whose model state reads but whose `data` item (the input iterator) does not (the
  input pipeline changed: tasks, sources, buckets, hosts; or its files are damaged) gives its
  model state alone, saying so: the caller's data starts again from its first batch; training
  is not lost. A checkpoint that does not read (truncated or corrupted files) is named in one
  warning line and moved aside to `<step>.unreadable` (never deleted), and the previous one is
  tried. A readable checkpoint of a different model (parameter shapes) raises
  IncompatibleCheckpointError. `restore_args(with_data)` gives fresh restore args for each
  attempt (a failed one may have filled some), with or without the `data` item.
  """
  root = epath.Path(manager.directory)
  for step in sorted(manager.all_steps(), reverse=True):
    failure = None
    with _unraisable_ignored():
      try:
        mismatch = _param_mismatch(manager, step, abstract_params)
        if mismatch is None:
          return step, manager.restore(step, args=restore_args(True))
      except Exception as e:  # Orbax and TensorStore raise many kinds for a damaged file
        failure = _innermost_message(e)
        _drop_late_restore_reports()  # before the second try below leaves more reads in flight
      if failure is not None:
        try:
          restored = manager.restore(step, args=restore_args(False))
          log.warning("checkpoint %d: its data iterator does not restore (%s): resuming its "
                      "model and optimizer state with the data from the first batch", step, failure)
          return step, restored
        except Exception:  # the model state does not read either: moved aside below
          pass
    if failure is None:
      raise IncompatibleCheckpointError(
          f"{root / str(step)}: {mismatch}. The workdir holds another model; train in a new one")
    _drop_late_restore_reports()  # the hook again: leaving _unraisable_ignored put back the old
    moved = _move_aside(root, step) if jax.process_index() == 0 else root / str(step)
    log.warning("checkpoint %d is unreadable (%s); moved aside to %s, trying the previous one",
                step, failure, moved)
    manager.reload()
  return None, None


def _innermost_message(error: BaseException) -> str:
  """The first line of the root cause: TensorStore's error names the file and the tensor, the
  exceptions wrapped around it hold pages of its spec."""
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _drop_late_restore_reports() -> None:
  """TensorStore reads still in flight when a restore fails finish later, on their own threads:
  some find Orbax's event loop closed and report `RuntimeError: Event loop is closed` with a
  traceback, others leave a failed asyncio task whose error asyncio logs when it is collected
  ("Task exception was never retrieved"). They repeat the failure already named, so from the
  first failed restore on those two reports are dropped; every other passes."""
  logging.getLogger("asyncio").addFilter(_not_a_late_task_report)  # once: a set of filters
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_reports", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)
  hook.drops_closed_loop_reports = True
  sys.unraisablehook = hook


def _not_a_late_task_report(record: logging.LogRecord) -> bool:
  return not record.getMessage().startswith("Task exception was never retrieved")


@contextlib.contextmanager
def _unraisable_ignored():
  """A failed restore leaves reads in flight that report their own errors when collected
  (`Exception ignored in <coroutine ...>`); they are the error already named, so drop them."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous
