"""Embedding vectors: one L2 normalisation for numpy and JAX, exact chunked top-k."""

import jax.numpy as jnp
import numpy as np

from gembed import vectors


def test_l2_normalize_numpy_and_jax_agree_with_torch_semantics():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-13, 0.0]], np.float32)
  expected = np.array([[0.6, 0.8], [0.0, 0.0], [0.1, 0.0]], np.float32)  # norm floored at 1e-12
  out = vectors.l2_normalize(x)
  assert isinstance(out, np.ndarray) and out.dtype == np.float32
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(vectors.l2_normalize(jnp.asarray(x))), expected, rtol=1e-6)


def test_chunked_top_k_matches_brute_force_with_exclusions():
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(7, 5)).astype(np.float32)
  corpus = rng.normal(size=(23, 5)).astype(np.float32)
  exclude = [[0, 5], [], [22], [1, 2, 3], [7], [8, 9], [10]]
  scores, ids = vectors.top_k(queries, corpus, 6, exclude, query_chunk=3, corpus_chunk=4)
  full = queries @ corpus.T
  for i, excluded in enumerate(exclude):
    full[i, excluded] = -np.inf
    expected = np.argsort(-full[i], kind="stable")[:6]
    np.testing.assert_array_equal(ids[i], expected)
    np.testing.assert_allclose(scores[i], full[i, expected], rtol=1e-5)
  # more neighbours asked for than the corpus has admissible: id -1, score -inf
  scores, ids = vectors.top_k(queries[:1], corpus[:3], 4, [[1]])
  assert list(ids[0][2:]) == [-1, -1] and np.isneginf(scores[0][2:]).all()
