"""Optimizer: AdamW with warmup + decay, global-norm clipping, a weight-decay mask, and a frozen
base for adapter runs."""

from __future__ import annotations

import jax
import optax

from gembed.models import lora


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, decay: str = "linear",
                           end_factor: float = 0.0) -> optax.Schedule:
  warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
  decay_steps = max(total_steps - warmup_steps, 1)
  if decay == "linear":
    after = optax.linear_schedule(peak, peak * end_factor, decay_steps)
  elif decay == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=end_factor)
  elif decay == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"optim.decay {decay!r}: use linear, cosine or constant")
  return optax.join_schedules([warmup, after], [max(warmup_steps, 1)])


def weight_decay_mask(params):
  """Decay matrices only: biases and LayerNorm scales are left alone (BERT convention)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key not in ("bias", "scale"), params)


def new_head_mask(params):
  """True for the projection head (new at initialisation), False for the pretrained encoder."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[0].key == "projection", params)


def make_optimizer(config, frozen_base: bool = False
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`config` is the `optim` group of a training config. `frozen_base` (adapter runs): only
  `lora.trainable_mask`'s leaves are updated, and only they get optimizer state."""
  schedule = learning_rate_schedule(config.learning_rate, config.warmup_steps, config.total_steps,
                                    config.decay, config.end_factor)
  if config.name == "adamw":
    core = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                       weight_decay=config.weight_decay, mask=weight_decay_mask)
  elif config.name == "sgd":
    core = optax.sgd(schedule)
  else:
    raise ValueError(f"optim.name {config.name!r}: use adamw or sgd")
  chain = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm else []
  chain.append(core)
  # A randomly initialised head next to a pretrained encoder wants a larger step than the
  # encoder can take without forgetting; scaling its updates gives it peak * multiplier.
  multiplier = config.get("projection_lr_multiplier", 1.0)
  if multiplier != 1.0:
    chain.append(optax.masked(optax.scale(multiplier), new_head_mask))
  optimizer = optax.chain(*chain)
  if frozen_base:
    optimizer = optax.multi_transform(
        {"train": optimizer, "frozen": optax.set_to_zero()},
        lambda params: jax.tree.map(lambda t: "train" if t else "frozen", lora.trainable_mask(params)))
  return optimizer, schedule
