"""`gembed bench memory`: compiled memory and throughput of the plain and the GradCache step."""

from __future__ import annotations

import statistics
import time

from gembed import batch
from gembed.tools.bench.common import model_dir, mrl_dims, read_rows, train_setup


def run(args) -> dict:
  """Compiled per-device temporary memory of the plain and the GradCache step over global batch
  sizes (XLA's buffer assignment, `memory_analysis()`), and measured throughput of both."""
  import jax

  dims = mrl_dims(model_dir(args))
  rows = read_rows(args.triples, max(args.run_batch, args.batch_size) * (args.run_steps + 1))
  result = {"max_length": args.max_length, "mrl_dims": dims, "hard_negatives": 1,
            "grad_cache_chunk": args.chunk, "device": jax.devices()[0].device_kind,
            "temp_gib": {}, "examples_per_s": {}}
  for name, chunk in (("plain", 0), ("grad_cache", args.chunk)):
    run_batch = args.batch_size if chunk == 0 else args.run_batch
    state, step, batches, _, _ = train_setup(model_dir(args), rows, run_batch, args.max_length,
                                             dims, chunk)
    result["temp_gib"][name] = {}
    for b in args.batches:
      abstract = {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, dtype)
                  in batch.shapes(b, args.max_length, args.max_length, 1).items()}
      temp = step.lower(state, abstract).compile().memory_analysis().temp_size_in_bytes
      result["temp_gib"][name][b] = temp / 2 ** 30
      print(f"{name} batch {b}: temp {temp / 2 ** 30:.2f} GiB", flush=True)
    times = []
    for step_batch in batches[:args.run_steps + 1]:  # the first call compiles
      start = time.perf_counter()
      state, metrics = step(state, step_batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    result["examples_per_s"][f"{name}@{run_batch}"] = run_batch / statistics.median(times[1:])
    print(f"{name} batch {run_batch}: {result['examples_per_s'][f'{name}@{run_batch}']:.2f} "
          "examples/s", flush=True)
  return result
