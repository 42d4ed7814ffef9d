"""An MRL-ordered projection head for a pretrained encoder, fitted before training.

A new head that is a random rotation keeps every cosine at full width but spreads the
encoder's information evenly over the outputs, so a prefix of d values keeps a random d/D of
it. Fitted here instead, on pooled embeddings of training texts from the frozen encoder:

- `pca_rotation`: the eigenvectors of the embeddings' second-moment matrix, largest first, so
  each prefix keeps the most energy a linear map of that width can;
- `fit_mrl_rotation`: starting from that, the rotation whose prefixes best reproduce the
  full-width similarity *ranking* of documents for each query (KL between the softmaxes of
  full-width and prefix similarities, summed over the MRL dims): structure distillation from
  the encoder into its own prefixes, with no labels.

Both are orthogonal, so the full-width embedding is the encoder's exactly (cosines unchanged)
and training starts from the pretrained model at every width it is asked to serve.
"""

from __future__ import annotations

import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gembed.vectors import l2_normalize

log = logging.getLogger(__name__)


def pca_rotation(embeddings: np.ndarray) -> np.ndarray:
  """(D, D) orthogonal: columns = eigenvectors of the unit embeddings' second moment, by
  decreasing eigenvalue (uncentred: cosines are uncentred too)."""
  x = l2_normalize(np.asarray(embeddings, np.float64))
  values, vectors = np.linalg.eigh(x.T @ x)
  return vectors[:, np.argsort(values)[::-1]].astype(np.float32)


def prefix_kl(rotation, queries, documents, dims: Sequence[int], temperature: float):
  """Sum over dims of the mean KL(full-width ranking || prefix ranking) of documents per query."""
  q, d = queries @ rotation, documents @ rotation
  target = jax.nn.log_softmax(l2_normalize(queries) @ l2_normalize(documents).T / temperature)
  total = 0.0
  for dim in dims:
    approx = jax.nn.log_softmax(l2_normalize(q[:, :dim]) @ l2_normalize(d[:, :dim]).T / temperature)
    total = total + jnp.mean(jnp.sum(jnp.exp(target) * (target - approx), axis=-1))
  return total


def fit_mrl_rotation(queries: np.ndarray, documents: np.ndarray, dims: Sequence[int], *,
                     temperature: float = 0.05, steps: int = 300, batch_size: int = 512,
                     learning_rate: float = 2e-3, seed: int = 0) -> tuple[np.ndarray, list[float]]:
  """Orthogonal (D, D) head fitted to `prefix_kl` from the PCA rotation; returns it and the
  loss every 50 steps. `queries[i]`, `documents[i]` are pooled embeddings of a training pair."""
  base = jnp.asarray(pca_rotation(np.concatenate([queries, documents])))
  width = base.shape[0]
  small = [d for d in dims if d < width]
  if not small:
    return np.asarray(base), []

  def rotation(skew):  # exp of a skew-symmetric matrix: always orthogonal
    return base @ jax.scipy.linalg.expm(skew - skew.T)

  optimizer = optax.adam(learning_rate)
  q_all, d_all = jnp.asarray(queries, jnp.float32), jnp.asarray(documents, jnp.float32)

  @jax.jit
  def step(skew, opt_state, rows):
    loss, grads = jax.value_and_grad(
        lambda s: prefix_kl(rotation(s), q_all[rows], d_all[rows], small, temperature))(skew)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(skew, updates), opt_state, loss

  skew = jnp.zeros((width, width), jnp.float32)
  opt_state = optimizer.init(skew)
  rng = np.random.default_rng(seed)
  batch = min(batch_size, len(queries))
  history = []
  for i in range(steps):
    skew, opt_state, loss = step(skew, opt_state, rng.choice(len(queries), batch, replace=False))
    if i % 50 == 0 or i == steps - 1:
      history.append(float(loss))
      log.info("head fit step %d: prefix KL %.4f", i, history[-1])
  return np.asarray(rotation(skew)), history
