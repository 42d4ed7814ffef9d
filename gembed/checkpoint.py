"""Thin Orbax layer: the training CheckpointManager, params-only loads, standalone params dirs.

A training checkpoint is a Composite of items:
  params     the model parameters (what encode/eval/soup/export load on their own)
  opt_state  the optimizer state
  train      step and RNG key
  data       every host's input-iterator position (gembed.data.iterator_handler; optional)
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_SUBDIR = "checkpoints"


def absolute(path: str) -> str:
  """Absolute local path; URLs (gs://...) unchanged. Workdirs may live on GCS."""
  return str(path) if "://" in str(path) else os.path.abspath(path)


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
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(absolute(path))
  return jax.tree_util.tree_map(np.asarray, restored)
