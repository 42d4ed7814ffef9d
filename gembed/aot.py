"""Ahead-of-time check: compile a config's train step for a device topology and report
per-device memory, before a TPU is rented.

    python -m gembed.aot --config configs/prefinetune.py --topology v5e:4x4 [--config.a.b=v ...]
    python -m gembed.aot --config configs/prefinetune.py      # this host's devices

With `--topology`, the step is compiled by libtpu for that slice (pip install 'gembed[tpu]');
no TPU is needed. Without it, it is compiled for the local devices (e.g. 8 simulated CPUs with
XLA_FLAGS=--xla_force_host_platform_device_count=8). Only shapes are used: no weights are read
(a Hugging Face init needs just its config.json) and no data is loaded. Sharding errors (a mesh
that does not divide the batch, a ring loss without enough rows per device) surface here.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp

from gembed import modeldir, sharding
from gembed.models import embedder
from gembed.optim import make_optimizer
from gembed.steps import TrainState


def abstract_batch(config, mesh) -> dict:
  """ShapeDtypeStructs of one global batch of the config, sharded like the trainer's."""
  d = config.data
  b, k = d.global_batch_size, d.num_negatives
  rows = sharding.batch_sharding(mesh)
  shapes = {"query_ids": ((b, d.query_length), jnp.int32),
            "query_mask": ((b, d.query_length), jnp.int32),
            "positive_ids": ((b, d.document_length), jnp.int32),
            "positive_mask": ((b, d.document_length), jnp.int32),
            "query_key": ((b,), jnp.int32), "positive_key": ((b,), jnp.int32)}
  if k:
    shapes.update(negative_ids=((b, k, d.document_length), jnp.int32),
                  negative_mask=((b, k, d.document_length), jnp.int32),
                  negative_valid=((b, k), jnp.bool_))
  return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
          for name, (shape, dtype) in shapes.items()}


def compile_train_step(config, devices=None):
  """(compiled step, model config) for `devices` (default: this host's)."""
  from gembed.modeldir import resolve_model_arg
  from gembed.train import jit_train_step, model_config_for_run, optimizer_state_sharding

  model_config = model_config_for_run(
      modeldir.read_model_config(resolve_model_arg(config.model.init)), config.model)
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


def _gib(n: int) -> str:
  return f"{n / 2 ** 30:.2f} GiB"


def run(argv: list[str]) -> int:
  from absl import flags
  from ml_collections import config_flags

  flag_values = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file("config", None, "training config file",
                                                lock_config=True, flag_values=flag_values)
  topology = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:4x4; default: local devices",
                                 flag_values=flag_values)
  as_json = flags.DEFINE_bool("json", False, "print the report as JSON", flag_values=flag_values)
  try:
    flag_values(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    print(f"{argv[0]}: config error: {str(e).strip(chr(39))}", file=sys.stderr)
    return 2
  config = config_flag.value
  if config is None:
    print(f"{argv[0]}: --config is required", file=sys.stderr)
    return 2
  try:
    devices = topology_devices(topology.value) if topology.value else jax.devices()
    compiled, model_config = compile_train_step(config, devices)
  except (ValueError, RuntimeError) as e:
    print(f"{argv[0]}: error: {e}", file=sys.stderr)
    return 1
  report = memory_report(compiled)
  report.update(devices=len(devices), device_kind=devices[0].device_kind,
                mesh=list(sharding.mesh_shape(config.mesh.shape, len(devices))),
                global_batch=config.data.global_batch_size,
                grad_cache=bool(config.train.grad_cache), ring=bool(config.loss.ring))
  if as_json.value:
    print(json.dumps(report, indent=2))
  else:
    print(f"{report['device_kind']} x {report['devices']}, mesh (data, fsdp, tensor) = "
          f"{tuple(report['mesh'])}, global batch {report['global_batch']}, "
          f"{model_config.family} {model_config.num_layers} layers x {model_config.hidden_size}")
    for name in ("argument", "output", "alias", "temp", "generated_code", "peak_estimate"):
      print(f"  {name:>15}: {_gib(report[name])} per device")
  return 0


if __name__ == "__main__":
  sys.exit(run(sys.argv))
