"""Device mesh and logical-axis rules.

One rule table maps the model's logical axes to mesh axes (data, fsdp, tensor); the mesh
*shape* is the preset: all devices on `data` is data parallelism, on `fsdp` shards parameters
and optimizer state as well, on `tensor` splits heads and MLP columns. Mesh axes of size 1
cost nothing, so the same rules serve every preset.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("proj", None),
    ("length", None),
    ("layers", None),  # the stacked-layer axis of scan_layers: every device holds every layer
)

# Named mesh shapes; -1 takes the remaining devices.
MESH_PRESETS = {
    "data": (-1, 1, 1),
    "fsdp": (1, -1, 1),
    "data_fsdp": (2, -1, 1),
    "data_tensor": (-1, 1, 2),
}


def mesh_shape(spec: str | Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """A preset name, "D,F,T" (e.g. "2,4,1"; -1 takes the remaining devices) or a sequence."""
  if isinstance(spec, str) and spec in MESH_PRESETS:
    shape = list(MESH_PRESETS[spec])
  elif isinstance(spec, str):
    try:
      shape = [int(x) for x in spec.split(",")]
    except ValueError:
      raise ValueError(f"mesh shape {spec!r}: use a preset ({', '.join(MESH_PRESETS)}) or "
                       "'D,F,T' sizes for the data, fsdp and tensor axes") from None
  else:
    shape = list(spec)
  if len(shape) != 3 or shape.count(-1) > 1:
    raise ValueError(f"mesh shape {spec!r}: give 3 sizes for {MESH_AXES}, at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh shape {spec!r} does not divide {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh shape {tuple(shape)} needs {np.prod(shape)} devices, have {num_devices}")
  return tuple(shape)


def make_mesh(spec: str | Sequence[int] = "data", devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(spec, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def _fit_to_shape(spec: P, shape: tuple[int, ...], mesh: Mesh, name: str) -> P:
  """Drops mesh axes that do not divide a dimension (e.g. vocab 30522 over 4 devices)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    if size > 1 and dim % size:
      log.info("replicating %s dim %d: not divisible by mesh axes %s (%d)", name, dim, names, size)
      fitted.append(None)
    else:
      fitted.append(axes)
  return P(*fitted)


def param_shardings(logical_specs, abstract_params, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """NamedShardings for a parameter-shaped tree, from its logical axis names."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)

  def one(path, spec, leaf):
    name = jax.tree_util.keystr(path)
    return NamedSharding(mesh, _fit_to_shape(spec, leaf.shape, mesh, name))

  return jax.tree_util.tree_map_with_path(
      one, mesh_specs, abstract_params, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading dimension on the mesh axes of the logical "batch" axis; the rest replicated."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), LOGICAL_AXIS_RULES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# The rules activations are constrained by, set only while a train step is traced. Kept apart
# from flax's global rules on purpose: under those, flax's DenseGeneral constrains its flattened
# kernel with the unflattened axis names and fails; parameters get their layout from the step's
# in/out shardings instead.
_ACTIVATION_RULES = contextvars.ContextVar("gembed_activation_rules", default=None)


def constrain(x, logical_axes: tuple):
  """An activation pinned to the mesh layout of its logical axes while a step is traced under
  `step_context`; unchanged elsewhere (encoding, evaluation, init)."""
  rules = _ACTIVATION_RULES.get()
  return x if rules is None else nn.with_logical_constraint(x, logical_axes, rules=rules)


@contextlib.contextmanager
def step_context(mesh: Mesh):
  """Where a train step is traced (called or lowered): under the mesh (the ring loss's
  shard_map reads it) and the logical-axis rules, so every `constrain` in the models takes
  effect (hidden states stay batch-sharded over data x fsdp). Without it XLA guesses the
  activation layouts."""
  token = _ACTIVATION_RULES.set(LOGICAL_AXIS_RULES)
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _ACTIVATION_RULES.reset(token)


class StepUnderRules:
  """A jitted step that is always called and lowered inside `step_context(mesh)`, so no caller
  can trace it without the rules (the trainer, the AOT check and the benchmarks share it)."""

  def __init__(self, jitted, mesh: Mesh):
    self.jitted, self.mesh = jitted, mesh

  def __call__(self, *args):
    with step_context(self.mesh):
      return self.jitted(*args)

  def lower(self, *args):
    with step_context(self.mesh):
      return self.jitted.lower(*args)
