"""Ahead-of-time check: compile a config's train step for a device topology and report
per-device memory, before a TPU is rented (the command line: `python -m gembed.aot`).

With `--topology`, the step is compiled by libtpu for that slice (pip install 'gembed[tpu]');
no TPU is needed. Without it, it is compiled for the local devices (e.g. 8 simulated CPUs with
XLA_FLAGS=--xla_force_host_platform_device_count=8). Only shapes are used: no weights are read
(a Hugging Face init needs just its config.json) and no data is loaded. Sharding errors (a mesh
that does not divide the batch, a ring loss without enough rows per device) surface here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gembed import batch, sharding
from gembed.formats import modeldir
from gembed.models import embedder
from gembed.optim import make_optimizer
from gembed.state import jit_train_step, model_config_for_run, optimizer_state_sharding
from gembed.steps import TrainState


def abstract_batch(config, mesh) -> dict:
  """ShapeDtypeStructs of one global batch of the config, sharded like the trainer's."""
  d = config.data
  rows = sharding.batch_sharding(mesh)
  return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=rows) for name, (shape, dtype) in
          batch.shapes(d.global_batch_size, d.query_length, d.document_length,
                       d.num_negatives).items()}


def compile_train_step(config, devices=None):
  """(compiled step, model config) for `devices` (default: this host's)."""
  model_config = model_config_for_run(
      modeldir.read_model_config(modeldir.resolve_model_arg(config.model.init)), config.model)
  mesh = sharding.make_mesh(config.mesh.shape, devices)
  params = jax.eval_shape(lambda: embedder.init_params(model_config, jax.random.PRNGKey(0)))
  param_sharding = sharding.param_shardings(embedder.logical_axes(model_config), params, mesh)
  optimizer, schedule = make_optimizer(config.optim)
  replicated = sharding.replicated(mesh)
  state_sharding = TrainState(
      step=replicated, params=param_sharding,
      opt_state=optimizer_state_sharding(optimizer, params, param_sharding, mesh), rng=replicated)
  abstract_state = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
      opt_state=jax.eval_shape(optimizer.init, params),
      rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)))
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                abstract_state, state_sharding)
  step = jit_train_step(config, model_config, optimizer, schedule, state_sharding, mesh)
  with jax.set_mesh(mesh):
    compiled = step.lower(abstract_state, abstract_batch(config, mesh)).compile()
  return compiled, model_config


def memory_report(compiled) -> dict:
  """Per-device bytes from XLA's buffer assignment (`compiled.memory_analysis()`)."""
  m = compiled.memory_analysis()
  report = {name: int(getattr(m, f"{name}_size_in_bytes")) for name in
            ("argument", "output", "alias", "temp", "generated_code")}
  # Donated state aliases its outputs: live at once = arguments + outputs - aliased + temporaries.
  report["peak_estimate"] = (report["argument"] + report["output"] - report["alias"]
                             + report["temp"])
  return report


def topology_devices(name: str):
  """Devices of a named TPU slice (e.g. "v5e:2x2", "v4:2x2x1"), compiled for by libtpu."""
  from jax.experimental import topologies
  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
  except Exception as e:  # libtpu missing or the name unknown: say which
    raise RuntimeError(f"--topology {name}: cannot describe this TPU slice ({e}); install "
                       "the tpu extra (pip install 'gembed[tpu]') and check the name, e.g. "
                       "v5e:2x2 or v4:2x2x1") from e
