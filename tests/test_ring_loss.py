"""The ring NCE (shard_map + ppermute) equals the plain loss: values, accuracy and gradients."""

import functools

import chex
import jax
import numpy as np
import pytest

from gembed import losses, sharding
from test_losses import _batch as loss_batch, reference_nce


def _batch(seed, b=16):
  q, p, n, valid, q_keys, p_keys = loss_batch(seed, b=b, k=2, d=24)
  q_keys[b // 2 + 1] = q_keys[2]  # duplicate queries on different devices
  p_keys[b - 2] = p_keys[1]  # and duplicate positives
  p[3] = q[3]  # an easy positive, so accuracy is not trivially 0
  return q, p, n, valid, q_keys, p_keys


MRL = dict(dims=(24, 12, 6), weights=(1.0, 0.5, 0.25), temperature=0.05)


def _plain(q, p, n, valid, qk, pk, decoupled):
  return losses.matryoshka_loss(q, p, n, valid, query_keys=qk, positive_keys=pk,
                                decoupled=decoupled, **MRL)


def _ring(mesh, q, p, n, valid, qk, pk, decoupled):
  return losses.ring_matryoshka_loss(mesh, q, p, n, valid, query_keys=qk, positive_keys=pk,
                                     decoupled=decoupled, **MRL)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1)])
@pytest.mark.parametrize("with_negatives", [True, False])
@pytest.mark.parametrize("decoupled", [False, True])
def test_ring_loss_equals_plain_loss_and_gradients(shape, with_negatives, decoupled):
  mesh = sharding.make_mesh(shape)
  q, p, n, valid, qk, pk = _batch(0)
  if not with_negatives:
    n = valid = None
  rows = sharding.batch_sharding(mesh)
  placed = [None if x is None else jax.device_put(x, rows) for x in (q, p, n, valid, qk, pk)]

  def value_and_grads(fn, args):
    f = lambda q, p, n: fn(q, p, n, *args[3:], decoupled)[0]
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1) if n is None else (0, 1, 2)))(*args[:3])

  want = value_and_grads(_plain, (q, p, n, valid, qk, pk))
  got = value_and_grads(functools.partial(_ring, mesh), placed)
  chex.assert_trees_all_close(jax.device_get(got), jax.device_get(want), atol=1e-5, rtol=1e-5)

  ring_total, ring_per_dim, ring_acc = jax.jit(functools.partial(_ring, mesh, decoupled=decoupled))(
      *placed[:6])
  total, per_dim, acc = _plain(q, p, n, valid, qk, pk, decoupled)
  chex.assert_trees_all_close((ring_per_dim, ring_acc), (per_dim, acc), atol=1e-5, rtol=1e-5)
  assert 0 < float(ring_acc[24]) < 1
  expected = reference_nce(q, p, n, valid, qk, pk, 0.05, decoupled)
  np.testing.assert_allclose(float(ring_per_dim[24]), expected, rtol=1e-5)


def test_ring_loss_refuses_a_batch_that_does_not_divide():
  mesh = sharding.make_mesh((8, 1, 1))
  q, p, n, valid, qk, pk = _batch(0, b=12)
  with pytest.raises(ValueError, match="does not divide over 8 devices"):
    _ring(mesh, q, p, n, valid, qk, pk, False)


def test_ring_option_of_the_train_step_equals_the_plain_step():
  from gembed.models import embedder
  from gembed.steps import LossConfig, loss_fn
  from tiny import TINY, random_batch

  config = TINY.replace(projection_dim=24)
  mesh = sharding.make_mesh((2, 4, 1))
  params = embedder.init_params(config, jax.random.PRNGKey(0))
  batch = jax.device_put(random_batch(0, batch=16), sharding.batch_sharding(mesh))
  results = []
  for ring in (False, True):
    loss = LossConfig(temperature=0.05, dims=(24, 12), ring=ring)
    fn = jax.jit(jax.value_and_grad(functools.partial(loss_fn, model_config=config, loss_config=loss),
                                    has_aux=True))
    with jax.set_mesh(mesh):
      results.append(jax.device_get(fn(params, batch, None)))
  chex.assert_trees_all_close(results[1], results[0], atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="jax.set_mesh"):
    loss = LossConfig(temperature=0.05, ring=True)
    jax.jit(functools.partial(loss_fn, model_config=config, loss_config=loss))(params, batch, None)
