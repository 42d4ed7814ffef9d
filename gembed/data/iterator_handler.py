"""Orbax handler for tf.data iterator positions, one file set per host.

Orbax ships no tf.data handler, and its JSON handler writes on the primary host only; every
host here writes `process_<i>/` inside the checkpoint item directory with
`tf.train.Checkpoint(iterator=...)`, and restores its own.
"""

from __future__ import annotations

import dataclasses

import jax
import orbax.checkpoint as ocp
import tensorflow as tf
from etils import epath


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves and restores a `tf.data` iterator in place."""

  def save(self, directory: epath.Path, args: "DataIteratorSave"):
    prefix = epath.Path(directory) / f"process_{jax.process_index()}" / "iterator"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(iterator=args.iterator).write(str(prefix))

  def restore(self, directory: epath.Path, args: "DataIteratorRestore"):
    prefix = epath.Path(directory) / f"process_{jax.process_index()}" / "iterator"
    if not (prefix.parent).exists():
      raise FileNotFoundError(f"{directory}: no data iterator state for process {jax.process_index()}"
                              " (was the run started with a different number of hosts?)")
    tf.train.Checkpoint(iterator=args.iterator).read(str(prefix)).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: tf.data.Iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: tf.data.Iterator
