"""Losses against a plain numpy loop reference (method.md section 2)."""

import numpy as np
import pytest

from gembed import losses


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_nce(q, p, n, n_valid, q_keys, p_keys, tau, decoupled=False):
  q, p = _unit(q.astype(np.float64)), _unit(p.astype(np.float64))
  total = 0.0
  for i in range(len(q)):
    pos = np.exp(q[i] @ p[i] / tau)
    denom = 0.0 if decoupled else pos
    for j in range(len(q)):
      if j != i and q_keys[j] != q_keys[i] and p_keys[j] != p_keys[i]:
        denom += np.exp(q[i] @ p[j] / tau)
    if n is not None:
      for k in range(n.shape[1]):
        if n_valid[i, k]:
          denom += np.exp(q[i] @ _unit(n[i, k].astype(np.float64)) / tau)
    total += -np.log(pos / denom)
  return total / len(q)


def _batch(seed, b=6, k=2, d=16):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, d)).astype(np.float32)
  p = rng.normal(size=(b, d)).astype(np.float32)
  n = rng.normal(size=(b, k, d)).astype(np.float32)
  valid = rng.random((b, k)) > 0.3
  q_keys = np.arange(b, dtype=np.int32)
  p_keys = np.arange(100, 100 + b, dtype=np.int32)
  return q, p, n, valid, q_keys, p_keys


@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_nce_matches_loop(with_negatives, decoupled):
  q, p, n, valid, qk, pk = _batch(0, k=3)
  # Duplicates: rows 1 and 4 share a positive, rows 2 and 5 share a query.
  p[4], pk[4] = p[1], pk[1]
  q[5], qk[5] = q[2], qk[2]
  n_arg = n if with_negatives else None
  loss, _ = losses.nce_loss(q, p, n_arg, valid if with_negatives else None, query_keys=qk,
                            positive_keys=pk, temperature=0.05, decoupled=decoupled)
  expected = reference_nce(q, p, n_arg, valid, qk, pk, 0.05, decoupled)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_mask_is_from_keys_not_embeddings():
  q, p, n, valid, qk, pk = _batch(1)
  p[3] = p[0]  # identical embedding but a different text key: still a negative
  loss, _ = losses.nce_loss(q, p, query_keys=qk, positive_keys=pk, temperature=0.1)
  np.testing.assert_allclose(float(loss), reference_nce(q, p, None, None, qk, pk, 0.1), rtol=1e-5)


def test_missing_hard_negatives_are_masked():
  q, p, n, valid, qk, pk = _batch(2, k=2)
  none_valid = np.zeros_like(valid)
  with_masked, _ = losses.nce_loss(q, p, n * 100, none_valid, query_keys=qk, positive_keys=pk,
                                   temperature=0.05)
  without, _ = losses.nce_loss(q, p, query_keys=qk, positive_keys=pk, temperature=0.05)
  np.testing.assert_allclose(float(with_masked), float(without), rtol=1e-6)


def test_low_temperature_stays_finite():
  q, p, n, valid, qk, pk = _batch(3)
  loss, acc = losses.nce_loss(q * 1e3, p, n, valid, query_keys=qk, positive_keys=pk,
                              temperature=1e-4)
  assert np.isfinite(float(loss)) and 0 <= float(acc) <= 1


def test_matryoshka_sums_prefix_losses():
  q, p, n, valid, qk, pk = _batch(4, d=32)
  total, per_dim, _ = losses.matryoshka_loss(q, p, n, valid, dims=(32, 16, 8), weights=(1.0, 0.5, 2.0),
                                             query_keys=qk, positive_keys=pk, temperature=0.05)
  expected = {d: reference_nce(q[:, :d], p[:, :d], n[..., :d], valid, qk, pk, 0.05) for d in (32, 16, 8)}
  for d in (32, 16, 8):
    np.testing.assert_allclose(float(per_dim[d]), expected[d], rtol=1e-5)
  np.testing.assert_allclose(float(total), expected[32] + 0.5 * expected[16] + 2 * expected[8], rtol=1e-5)
  with pytest.raises(ValueError, match="exceeds"):
    losses.matryoshka_loss(q, p, dims=(64,), query_keys=qk, positive_keys=pk, temperature=0.05)


def test_accuracy_counts_rows_whose_positive_wins():
  d = 8
  q = np.eye(4, d, dtype=np.float32)
  p = q.copy()
  p[3] = -p[3]  # row 3's positive points away from its query: every negative outscores it
  keys = np.arange(4, dtype=np.int32)
  _, acc = losses.nce_loss(q, p, query_keys=keys, positive_keys=keys + 10, temperature=0.05)
  assert float(acc) == pytest.approx(0.75)


@pytest.mark.parametrize("decoupled", [False, True])
def test_row_chunked_nce_equals_full_nce_with_gradients(decoupled):
  import jax

  q, p, n, valid, qk, pk = _batch(3, b=12, k=2)
  qk[7] = qk[1]
  pk[10] = pk[4]

  def loss(q, p, n, chunk):
    return losses.nce_loss(q, p, n, valid, query_keys=qk, positive_keys=pk, temperature=0.05,
                           decoupled=decoupled, row_chunk=chunk)

  full = jax.value_and_grad(lambda *a: loss(*a, 0)[0], argnums=(0, 1, 2))(q, p, n)
  for chunk in (3, 4):
    chunked = jax.value_and_grad(lambda *a: loss(*a, chunk)[0], argnums=(0, 1, 2))(q, p, n)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), chunked, full)
    np.testing.assert_allclose(loss(q, p, n, chunk)[1], loss(q, p, n, 0)[1])
  np.testing.assert_allclose(float(full[0]), reference_nce(q, p, n, valid, qk, pk, 0.05, decoupled),
                             rtol=1e-5)


def reference_prefix_distillation(q, p, dims, tau):
  def log_softmax_rows(q, p):
    logits = _unit(q.astype(np.float64)) @ _unit(p.astype(np.float64)).T / tau
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  teacher = log_softmax_rows(q, p)
  total = 0.0
  for d in dims:
    if d < q.shape[1]:
      student = log_softmax_rows(q[:, :d], p[:, :d])
      total += np.mean(np.sum(np.exp(teacher) * (teacher - student), axis=1))
  return total


def test_prefix_distillation_matches_numpy_and_teaches_only_prefixes():
  import jax

  q, p, *_ = _batch(4, b=12, d=16)
  dims = (16, 8, 4)
  value = losses.prefix_distillation_loss(q, p, dims=dims, temperature=0.1)
  np.testing.assert_allclose(float(value), reference_prefix_distillation(q, p, dims, 0.1), rtol=1e-5)
  assert float(losses.prefix_distillation_loss(q, p, dims=(16,), temperature=0.1)) == 0.0
  # The full width is the teacher: the loss does not move the values beyond the largest prefix.
  grad_q, grad_p = jax.grad(lambda q, p: losses.prefix_distillation_loss(
      q, p, dims=dims, temperature=0.1), argnums=(0, 1))(q, p)
  assert np.abs(grad_q[:, 8:]).max() == 0 and np.abs(grad_p[:, 8:]).max() == 0
  assert np.abs(grad_q[:, :8]).max() > 0
  chunked = jax.value_and_grad(lambda q: losses.prefix_distillation_loss(
      q, p, dims=dims, temperature=0.1, row_chunk=4))(q)
  full = jax.value_and_grad(lambda q: losses.prefix_distillation_loss(
      q, p, dims=dims, temperature=0.1))(q)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), chunked, full)
