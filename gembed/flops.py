"""Model FLOPs and device peak, for MFU (model FLOPs utilisation)."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp

from gembed.models.config import ModelConfig

# Dense bf16 peak FLOP/s per device (chip) by `device_kind` prefix.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def forward_flops_per_sequence(config: ModelConfig, length: int) -> float:
  """Matmul FLOPs of one forward pass over a sequence (embedding lookups excluded)."""
  e, m, layers = config.hidden_size, config.intermediate_size, config.num_layers
  per_token = 2 * (4 * e * e + 2 * e * m)  # q, k, v, out projections + MLP
  attention = 2 * 2 * length * e  # QK^T and PV per token
  flops = layers * length * (per_token + attention)
  if config.projection_dim:
    flops += 2 * e * config.projection_dim
  return float(flops)


def batch_forward_flops(config: ModelConfig, batch: int, query_length: int, doc_length: int,
                        num_negatives: int) -> float:
  """One forward pass over a batch's queries, positives and hard negatives."""
  return batch * (forward_flops_per_sequence(config, query_length)
                  + (1 + num_negatives) * forward_flops_per_sequence(config, doc_length))


def train_flops_per_step(config: ModelConfig, batch: int, query_length: int, doc_length: int,
                         num_negatives: int, teacher: ModelConfig | None = None) -> float:
  """Forward + backward (3x forward) over queries, positives and hard negatives, plus a
  distillation teacher's forward pass over the same texts."""
  flops = 3.0 * batch_forward_flops(config, batch, query_length, doc_length, num_negatives)
  if teacher is not None:
    flops += batch_forward_flops(teacher, batch, query_length, doc_length, num_negatives)
  return flops


def _cache_path() -> str:
  root = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  return os.path.join(root, "gembed", "cpu_peak_flops.json")


def measured_cpu_peak(size: int = 1024, repeats: int = 5) -> float:
  """Float32 matmul FLOP/s of this host's CPU backend (all cores), measured once and cached."""
  path = _cache_path()
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get("cpu_count") == os.cpu_count():
      return float(cached["flops"])
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x).lower(a).compile()
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  flops = 2 * size**3 / best
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"flops": flops, "cpu_count": os.cpu_count()}, f)
  return flops


def peak_flops_per_device(configured: float = 0.0) -> float:
  if configured:
    return configured
  device = jax.devices()[0]
  if device.platform == "cpu":
    # The host's cores are shared by all simulated CPU devices.
    return measured_cpu_peak() / jax.local_device_count()
  for prefix, flops in PEAK_FLOPS.items():
    if device.device_kind.startswith(prefix):
      return flops
  return 0.0  # unknown accelerator: MFU not reported
