"""`gembed aot`: compile a config's train step for a TPU slice or this host's devices
and print per-device memory, the step's FLOPs and the step time an MFU would mean
(gembed.tools.aot).

    gembed aot --config configs/prefinetune.py --topology v5e:4x4 [--config.a.b=v ...]
    gembed aot --config configs/prefinetune.py      # this host's devices
"""

from __future__ import annotations

import json
import sys

from gembed.cli import train


def _gib(n: int) -> str:
  return f"{n / 2 ** 30:.2f} GiB"


def add_parsers(sub) -> None:
  sub.add_parser("aot", help="ahead-of-time check: gembed aot --config configs/X.py "
                 "[--topology v5e:2x2] [--mfu 0.4] [--json] [--config.a.b=v ...] [-v]")


def define_flags(argv: list[str] = ()):
  """The AOT check's flags on a fresh FlagValues: --config (+ --config.a.b=v), --topology,
  --mfu, --json, -v."""
  from absl import flags

  flag_values = flags.FlagValues()
  train.config_flag(flag_values, argv)
  flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:4x4; default: local devices",
                      flag_values=flag_values)
  flags.DEFINE_float("mfu", 0.4, "report the step time this model FLOPs utilisation would mean",
                     flag_values=flag_values)
  flags.DEFINE_bool("json", False, "print the report as JSON", flag_values=flag_values)
  train.verbose_flag(flag_values)
  return flag_values


def run(argv: list[str]) -> int:
  flag_values = define_flags(argv)
  config = train.parse_config(flag_values, argv)
  if config is None:
    return 2
  import jax

  from gembed import sharding
  from gembed.tools.aot import compile_train_step, flops_report, memory_report, topology_devices
  try:
    devices = topology_devices(flag_values.topology) if flag_values.topology else jax.devices()
    compiled, model_config = compile_train_step(config, devices)
  except (ValueError, RuntimeError) as e:
    print(f"{argv[0]}: error: {e}", file=sys.stderr)
    return 1
  report = memory_report(compiled)
  report.update(flops_report(compiled, model_config, config, devices, flag_values.mfu))
  report.update(devices=len(devices), device_kind=devices[0].device_kind,
                mesh=list(sharding.mesh_shape(config.mesh.shape, len(devices))),
                global_batch=config.data.global_batch_size,
                grad_cache=bool(config.train.grad_cache), ring=bool(config.loss.ring))
  if flag_values.json:
    print(json.dumps(report, indent=2))
  else:
    print(f"{report['device_kind']} x {report['devices']}, mesh (data, fsdp, tensor) = "
          f"{tuple(report['mesh'])}, global batch {report['global_batch']}, "
          f"{model_config.family} {model_config.num_layers} layers x {model_config.hidden_size}")
    for name in ("argument", "output", "alias", "temp", "generated_code", "peak_estimate"):
      print(f"  {name:>15}: {_gib(report[name])} per device")
    print(f"  FLOPs per device and step: {report['xla_flops_per_device']:.3g} (XLA cost analysis), "
          f"{report['model_flops_per_device']:.3g} (model matmuls, gembed.flops)")
    if report["step_seconds_at_mfu"]:
      print(f"  at {report['mfu']:.0%} MFU of {report['peak_flops_per_device']:.3g} FLOP/s per "
            f"device: {report['step_seconds_at_mfu'] * 1e3:.1f} ms per step")
  return 0

