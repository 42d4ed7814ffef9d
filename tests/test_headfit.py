"""The fitted MRL head: orthogonal (full-width cosines kept), PCA-ordered, and its prefixes rank
documents closer to the full width than the PCA rotation's."""

import numpy as np

from gembed import headfit


def _pairs(seed=0, n=256, width=32):
  rng = np.random.default_rng(seed)
  scales = np.linspace(2.0, 0.2, width)  # anisotropic, as real embeddings are
  queries = rng.normal(size=(n, width)) * scales
  documents = queries + 0.5 * rng.normal(size=(n, width)) * scales
  return queries.astype(np.float32), documents.astype(np.float32)


def test_pca_rotation_orders_by_energy():
  queries, documents = _pairs()
  r = headfit.pca_rotation(np.concatenate([queries, documents]))
  np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-5)
  unit = np.concatenate([queries, documents])
  unit /= np.linalg.norm(unit, axis=1, keepdims=True)
  energy = ((unit @ r) ** 2).mean(axis=0)
  assert np.all(np.diff(energy) <= 1e-6)


def test_fitted_rotation_keeps_full_width_and_improves_prefixes():
  queries, documents = _pairs()
  dims = (16, 8)
  fitted, history = headfit.fit_mrl_rotation(queries, documents, dims, steps=60, batch_size=128)
  np.testing.assert_allclose(fitted.T @ fitted, np.eye(32), atol=1e-4)
  cos = lambda a, b: (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (  # noqa: E731
      b / np.linalg.norm(b, axis=1, keepdims=True)).T
  np.testing.assert_allclose(cos(queries @ fitted, documents @ fitted), cos(queries, documents),
                             atol=1e-4)
  pca = headfit.pca_rotation(np.concatenate([queries, documents]))
  kl = lambda r: float(headfit.prefix_kl(r, queries, documents, dims, 0.05))  # noqa: E731
  assert kl(fitted) < kl(pca) and history[-1] < history[0]
