"""Optimizer options: the new head's learning-rate multiplier and the weight-decay mask."""

import jax
import ml_collections
import numpy as np

from gembed.models import embedder
from gembed.optim import make_optimizer
from tiny import TINY

CONFIG = TINY.replace(projection_dim=16)


def _updates(multiplier):
  c = ml_collections.ConfigDict(dict(name="adamw", learning_rate=1e-3, warmup_steps=0,
                                     total_steps=10, decay="constant", end_factor=0.0,
                                     weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0,
                                     projection_lr_multiplier=multiplier))
  optimizer, _ = make_optimizer(c)
  params = embedder.init_params(CONFIG, jax.random.PRNGKey(0))
  grads = jax.tree.map(lambda x: np.full(x.shape, 0.01, np.float32), params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  return updates


def test_projection_lr_multiplier_scales_only_the_head():
  plain, boosted = _updates(1.0), _updates(10.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 10 * a, rtol=1e-6),
               plain["projection"], boosted["projection"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), plain["encoder"], boosted["encoder"])
