"""Low-rank adapters (LoRA, Hu et al. 2021) on the projections of a frozen encoder.

An adapted projection computes y = x W (+ b) + (alpha / rank) (x A) B. `lora_a` (the kernel's
input dims + rank) starts random and small, `lora_b` (rank + the kernel's output dims) at zero,
so an adapted model at initialisation computes exactly its base model. Both sit in the parameter
tree beside the `kernel` they adapt, with the kernel's logical axes on their kernel-side dims
(the rank dim is replicated), so the sharding rules place them like their kernel.

`ModelConfig.lora_targets` names the adapted projections, the same names for every family:
query, key, value, out (attention) and mlp_in, mlp_out (BERT's two MLP projections; a decoder's
gate and up projections are both mlp_in, its down projection mlp_out).

Training an adapter freezes everything else but a projection head (`trainable_mask`): a head is
either new at initialisation or part of what a task changes, and the adapter carries it.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gembed.models.config import ModelConfig

A, B = "lora_a", "lora_b"
# peft's and the paper's A init: uniform(+-1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)).
_A_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def matmul_2d(x, kernel, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` for a dense layer, x's trailing dims against the kernel's leading dims, as
  one (rows, in) @ (in, out) matmul. XLA:CPU runs the gradients of the N-d contraction through
  transposed copies; the 2-D form makes a MiniLM train step 16% faster (docs/benchmarks.md)."""
  (x_dims, _), _ = dimension_numbers
  n_in = len(x_dims)
  fan_in = math.prod(kernel.shape[:n_in])
  y = jnp.matmul(x.reshape(-1, fan_in), kernel.reshape(fan_in, -1), precision=precision,
                 preferred_element_type=preferred_element_type)
  return y.reshape(x.shape[:-n_in] + kernel.shape[n_in:])


class Dense(nn.DenseGeneral):
  """`nn.DenseGeneral` (same parameters, same output) plus a low-rank update when `rank` > 0.
  The input dims are the trailing `len(axes) - len(features)` dims of the input."""

  rank: int = 0
  alpha: float = 16.0
  axes: tuple = ()  # the kernel's logical axes: its input dims, then its output dims

  @nn.compact
  def __call__(self, inputs):
    y = super().__call__(inputs)
    if not self.rank:
      return y
    features = self.features if isinstance(self.features, tuple) else (self.features,)
    n_in = len(self.axes) - len(features)
    a = self.param(A, nn.with_logical_partitioning(_A_INIT, self.axes[:n_in] + (None,)),
                   inputs.shape[-n_in:] + (self.rank,), self.param_dtype)
    b = self.param(B, nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                   (None,) + self.axes[n_in:]),
                   (self.rank,) + features, self.param_dtype)
    dtype = self.dtype or jnp.float32
    low = jnp.tensordot(inputs.astype(dtype), a.astype(dtype), axes=n_in)
    delta = jnp.tensordot(low, b.astype(dtype), axes=1)
    return y + delta * jnp.asarray(self.alpha / self.rank, dtype)


def dense(cfg: ModelConfig, target: str, axes: tuple, **kwargs) -> Dense:
  """A projection of `cfg`'s encoder, adapted when `target` is one of `cfg.lora_targets`; its
  kernel initialised like the encoder's other kernels (normal, stddev 0.02) on logical `axes`."""
  rank = cfg.lora_rank if target in cfg.lora_targets else 0
  init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), axes)
  return Dense(kernel_init=init, rank=rank, alpha=cfg.lora_alpha, axes=axes, dot_general=matmul_2d,
               **kwargs)


def is_adapter(path) -> bool:
  return path[-1].key in (A, B)


def trainable_mask(params):
  """True for what an adapter run trains: the LoRA factors and a projection head."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: is_adapter(path) or path[0].key == "projection", params)


def split(params) -> tuple[dict, dict]:
  """(adapter: the trainable leaves, base: the rest), as two nested dicts of the same layout."""
  adapter, base = {}, {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [k.key for k in path]
    target = adapter if is_adapter(path) or keys[0] == "projection" else base
    for k in keys[:-1]:
      target = target.setdefault(k, {})
    target[keys[-1]] = leaf
  return adapter, base


def combine(base: dict, adapter: dict) -> dict:
  """`base` with `adapter`'s leaves added or put in place (a head replaces the base's)."""
  out = dict(base)
  for key, value in adapter.items():
    out[key] = combine(out.get(key, {}), value) if isinstance(value, dict) else value
  return out


def merge(params: dict, config: ModelConfig) -> tuple[dict, ModelConfig]:
  """Folds each adapter into its kernel, W + (alpha / rank) A B, and drops the factors: the
  plain model (lora_rank 0) that computes what the adapted one does. Pure; host arrays out;
  parameters in either layer layout (stacked `layers/...` kernels merge per layer)."""
  if not config.lora_rank:
    return params, config
  scale = config.lora_alpha / config.lora_rank

  def fold(tree):
    if not isinstance(tree, dict):
      return np.asarray(tree)
    if A not in tree:
      return {k: fold(v) for k, v in tree.items()}
    kernel, a, b = (np.asarray(tree[k], np.float32) for k in ("kernel", A, B))
    stacked = a.ndim + b.ndim - 2 - kernel.ndim  # 2 rank dims; a leading "layers" dim twice
    lead = kernel.shape[:stacked]
    a2 = a.reshape(lead + (-1, config.lora_rank))
    b2 = b.reshape(lead + (config.lora_rank, -1))
    delta = (a2 @ b2).reshape(kernel.shape) * np.float32(scale)
    rest = {k: np.asarray(v) for k, v in tree.items() if k not in (A, B, "kernel")}
    return {"kernel": (kernel + delta).astype(np.asarray(tree["kernel"]).dtype), **rest}

  return fold(params), config.replace(lora_rank=0)
