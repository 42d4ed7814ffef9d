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

from gembed import batch, flops, sharding
from gembed.data.teacher_store import read_manifest
from gembed.formats import modeldir
from gembed.optim import make_optimizer
from gembed.state import (abstract_params, abstract_train_state, in_step_teacher, jit_train_step,
                          model_config_for_run, teacher_config_for_run)


def abstract_batch(config, mesh) -> dict:
  """ShapeDtypeStructs of one global batch of the config, sharded like the trainer's (each row
  group at the full lengths with data.length_groups: the largest it can be); with
  precomputed teacher embeddings (their width from the teacher's config, else the store's)."""
  d = config.data
  rows = sharding.batch_sharding(mesh)
  teacher_dim = 0
  if config.distill.teacher_embeddings and config.distill.teacher:
    teacher_dim = modeldir.read_model_config(
        modeldir.resolve_model_arg(config.distill.teacher)).embedding_dim
  elif config.distill.teacher_embeddings:
    teacher_dim = read_manifest(config.distill.teacher_embeddings)["dim"]
  group = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=rows) for name, (shape, dtype) in
           batch.shapes(d.global_batch_size // d.length_groups, d.query_length, d.document_length,
                        d.num_negatives, teacher_dim).items()}
  return group if d.length_groups == 1 else (group,) * d.length_groups


def compile_train_step(config, devices=None):
  """(compiled step, model config) for `devices` (default: this host's)."""
  model_config = model_config_for_run(
      modeldir.read_model_config(modeldir.resolve_model_arg(config.model.init)), config.model)
  mesh = sharding.make_mesh(config.mesh.shape, devices)
  optimizer, schedule = make_optimizer(config.optim, frozen_base=bool(model_config.lora_rank))
  abstract = abstract_train_state(model_config, optimizer, mesh)
  teacher, teacher_args = None, ()
  if in_step_teacher(config):  # its parameters are arguments of the step: in the memory report
    teacher_config = teacher_config_for_run(
        modeldir.read_model_config(modeldir.resolve_model_arg(config.distill.teacher)), model_config)
    teacher = (teacher_config, abstract_params(teacher_config, mesh))
    teacher_args = (teacher[1],)
  step = jit_train_step(config, model_config, optimizer, schedule, abstract, mesh, teacher)
  compiled = step.lower(abstract, abstract_batch(config, mesh), *teacher_args).compile()
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


def flops_report(compiled, model_config, config, devices, mfu: float = 0.4) -> dict:
  """The step's FLOPs two ways, side by side: XLA's cost analysis of the compiled program (per
  device, everything it executes) and gembed.flops's matmul count (the MFU numerator); and the
  step time that `mfu` of the devices' peak would mean (no peak known: None)."""
  d = config.data
  model_flops = flops.train_flops_per_step(model_config, d.global_batch_size, d.query_length,
                                           d.document_length, d.num_negatives)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  peak = next((v for k, v in flops.PEAK_FLOPS.items() if devices[0].device_kind.startswith(k)),
              config.train.peak_flops_per_device or None)
  return {"xla_flops_per_device": float(cost.get("flops", 0.0)),
          "model_flops_per_device": model_flops / len(devices),
          "peak_flops_per_device": peak, "mfu": mfu,
          "step_seconds_at_mfu": model_flops / (mfu * peak * len(devices)) if peak else None}


def topology_devices(name: str):
  """Devices of a named TPU slice (e.g. "v5e:2x2", "v4:2x2x1"), compiled for by libtpu."""
  from jax.experimental import topologies
  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
  except Exception as e:  # libtpu missing or the name unknown: say which
    raise RuntimeError(f"--topology {name}: cannot describe this TPU slice ({e}); install "
                       "the tpu extra (pip install 'gembed[tpu]') and check the name, e.g. "
                       "v5e:2x2 or v4:2x2x1") from e
