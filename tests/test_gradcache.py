"""GradCache gives the plain step's loss and gradients (atol = rtol = 1e-5), on 1 and 8 devices;
so do both on a batch sorted into length groups (data.length_groups)."""

import functools

import chex
import jax
import numpy as np
import pytest

from gembed import sharding
from gembed.models import embedder
from gembed.steps import LossConfig, cached_loss_and_grads, loss_fn
from tiny import TINY, group_by_length, random_batch

CONFIG = TINY.replace(projection_dim=24)
LOSS = LossConfig(temperature=0.05, dims=(24, 12, 6))


def _loss_and_grads(mesh, chunk_size, config=CONFIG, batch_rows=16, num_negatives=2, rng=None,
                    length_groups=1):
  params = embedder.init_params(config, jax.random.PRNGKey(0))
  params = jax.device_put(params, sharding.param_shardings(embedder.logical_axes(config), params, mesh))
  batch = random_batch(0, batch=batch_rows, num_negatives=num_negatives)
  if num_negatives == 0:
    batch = {k: v for k, v in batch.items() if not k.startswith("negative")}
  if length_groups > 1:
    batch = group_by_length(batch, length_groups)
    assert len({g["query_ids"].shape for g in batch}) == length_groups  # the groups' own lengths
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  if chunk_size:
    fn = functools.partial(cached_loss_and_grads, model_config=config, loss_config=LOSS,
                           chunk_size=chunk_size)
  else:
    fn = jax.value_and_grad(functools.partial(loss_fn, model_config=config, loss_config=LOSS),
                            has_aux=True)
  with mesh:
    (loss, metrics), grads = jax.jit(fn)(params, batch, rng)
  return jax.device_get((loss, metrics, grads))


@functools.lru_cache(maxsize=None)
def _plain_single_device(num_negatives=2):
  return _loss_and_grads(sharding.make_mesh((1, 1, 1), jax.devices()[:1]), 0,
                         num_negatives=num_negatives)


def _assert_same(got, want, tolerance=1e-5):
  for got_part, want_part in zip(got, want):
    chex.assert_trees_all_close(got_part, want_part, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("chunk_size", [4, 8, 16])
def test_grad_cache_equals_plain_step_on_one_device(chunk_size):
  """Hard negatives (some missing), a duplicate query and a duplicate positive, 3 MRL dims."""
  got = _loss_and_grads(sharding.make_mesh((1, 1, 1), jax.devices()[:1]), chunk_size)
  _assert_same(got, _plain_single_device())


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1)])
def test_grad_cache_on_eight_devices_equals_single_device_plain_step(shape):
  got = _loss_and_grads(sharding.make_mesh(shape), 8)
  _assert_same(got, _plain_single_device())


@pytest.mark.parametrize("shape, chunk_size", [((1, 1, 1), 0), ((2, 4, 1), 8)])
def test_length_groups_give_the_ungrouped_loss_and_gradients(shape, chunk_size):
  """The rows sorted by length into two groups, each cut to its own longest text and embedded
  on its own: the loss over all rows, and its gradients, are the ungrouped batch's."""
  got = _loss_and_grads(sharding.make_mesh(shape, jax.devices()[:np.prod(shape)]), chunk_size,
                        length_groups=2)
  # Other matmul shapes and row order sum the same terms in another order (gradients reach 37).
  _assert_same(got, _plain_single_device(), tolerance=5e-5)


def test_grad_cache_without_hard_negatives():
  got = _loss_and_grads(sharding.make_mesh((1, 1, 1), jax.devices()[:1]), 4, num_negatives=0)
  _assert_same(got, _plain_single_device(num_negatives=0))


def test_grad_cache_dropout_masks_agree_between_embedding_and_backprop():
  """With dropout on, the chunks' forward passes in steps 1 and 3 must draw the same masks; if
  they did not, the gradient would not be the gradient of the reported loss. Checked against a
  finite difference of that loss along the gradient direction."""
  config = CONFIG.replace(dropout_rate=0.1)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  rng = jax.random.PRNGKey(7)
  loss, _, grads = _loss_and_grads(mesh, 4, config=config, rng=rng)
  params = embedder.init_params(config, jax.random.PRNGKey(0))
  batch = random_batch(0, batch=16, num_negatives=2)
  cached = jax.jit(functools.partial(cached_loss_and_grads, model_config=config, loss_config=LOSS,
                                     chunk_size=4))
  norm = np.sqrt(sum(float(np.sum(g ** 2)) for g in jax.tree.leaves(grads)))
  eps = 1e-3
  step = jax.tree.map(lambda p, g: p + eps * g / norm, params, grads)
  (moved, _), _ = cached(step, batch, rng)
  np.testing.assert_allclose((float(moved) - float(loss)) / eps, norm, rtol=0.05)


def test_chunk_size_must_divide_the_batch():
  with pytest.raises(ValueError, match="rows do not split into chunks of 5"):
    _loss_and_grads(sharding.make_mesh((1, 1, 1), jax.devices()[:1]), 5)


def test_rows_within_a_token_budget():
  from gembed.chunks import rows_within_tokens
  assert rows_within_tokens(64, 96, 1536, 1) == 16
  assert rows_within_tokens(64, 544, 1536, 1) == 2
  assert rows_within_tokens(64, 100, 10_000, 8) == 64  # the whole batch fits: one chunk
  assert rows_within_tokens(48, 10, 400, 8) == 24  # divides 48, a multiple of 8, 240 tokens
  assert rows_within_tokens(64, 544, 1536, 8) == 8  # over the budget: the devices' minimum
