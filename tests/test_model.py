"""Model options: bf16 compute keeps float32 parameters; remat changes memory, not results;
dropout drops its rate and keeps the expectation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gembed.models import embedder
from gembed.steps import LossConfig, loss_fn
from gembed.vectors import l2_normalize
from tiny import TINY, random_batch

CONFIG = TINY.replace(projection_dim=16)


def test_bf16_compute_float32_params():
  params = embedder.init_params(CONFIG, jax.random.PRNGKey(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  batch = random_batch(0)
  full = embedder.apply_model(CONFIG, params, batch["query_ids"], batch["query_mask"])
  half = embedder.apply_model(CONFIG.replace(compute_dtype="bfloat16"), params,
                              batch["query_ids"], batch["query_mask"])
  assert half.dtype == jnp.float32  # pooled output is float32 for the loss
  cos = np.sum(np.asarray(l2_normalize(full)) * np.asarray(l2_normalize(half)), 1)
  assert cos.min() > 0.99


def test_remat_gives_the_same_gradients():
  params = embedder.init_params(CONFIG, jax.random.PRNGKey(0))
  batch = random_batch(1)
  loss_config = LossConfig(dims=(16, 8))
  grad = lambda cfg: jax.grad(lambda p: loss_fn(p, batch, None, cfg, loss_config)[0])(params)
  plain, remat = grad(CONFIG), grad(CONFIG.replace(remat=True))
  for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_padding_does_not_change_embeddings():
  """Explicit masks: extra pad positions (any id) leave the embedding unchanged."""
  params = embedder.init_params(CONFIG, jax.random.PRNGKey(0))
  ids = np.array([[101, 2000, 2001, 102]], np.int32)
  mask = np.ones_like(ids)
  short = embedder.apply_model(CONFIG, params, ids, mask)
  padded_ids = np.concatenate([ids, np.full((1, 12), 7, np.int32)], axis=1)
  padded_mask = np.concatenate([mask, np.zeros((1, 12), np.int32)], axis=1)
  long = embedder.apply_model(CONFIG, params, padded_ids, padded_mask)
  np.testing.assert_allclose(short, long, atol=1e-5)


def test_new_orthogonal_head_keeps_the_encoders_cosine_geometry():
  """A fresh square head is random but orthogonal: at full width the embeddings' cosines are
  the encoder's own, so training starts from the pretrained model, not a distorted copy."""
  batch = random_batch(1)
  headless = TINY.replace(projection_dim=0)
  params = embedder.init_params(TINY.replace(projection_dim=TINY.hidden_size), jax.random.PRNGKey(3))

  def cosines(config, p):
    e = np.asarray(l2_normalize(embedder.apply_model(config, p, batch["query_ids"],
                                                              batch["query_mask"])))
    return e @ e.T

  encoder_only = {"encoder": params["encoder"]}
  np.testing.assert_allclose(cosines(TINY.replace(projection_dim=TINY.hidden_size), params),
                             cosines(headless, encoder_only), atol=1e-5)
  gaussian = TINY.replace(projection_dim=TINY.hidden_size, projection_init="lecun_normal")
  distorted = embedder.init_params(gaussian, jax.random.PRNGKey(3))
  distorted["encoder"] = params["encoder"]
  assert np.abs(cosines(gaussian, distorted) - cosines(headless, encoder_only)).max() > 1e-2


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("remat", [False, True])
def test_scan_over_layers_gives_the_unrolled_model(family, remat):
  """Same embeddings and gradients (in the unrolled layout) with one scanned layer."""
  config = CONFIG if family == "bert" else CONFIG.replace(
      family="llama", num_kv_heads=2, hidden_act="silu", layer_norm_eps=1e-6)
  config = config.replace(remat=remat)
  scanned_config = config.replace(scan_layers=True)
  params = embedder.init_params(config, jax.random.PRNGKey(0))
  scanned = embedder.layer_layout(params, scanned_config)
  assert "layers" in scanned["encoder"] and "layer_0" not in scanned["encoder"]
  assert scanned["encoder"]["layers"]["mlp_norm"]["scale"].shape[0] == config.num_layers
  batch = random_batch(2)
  loss = LossConfig(temperature=0.05, dims=(16, 8))

  def grads(cfg, p):
    return jax.grad(lambda p: loss_fn(p, batch, None, cfg, loss)[0])(p)

  unrolled_grads = grads(config, params)
  scanned_grads = embedder.layer_layout(jax.tree.map(np.asarray, grads(scanned_config, scanned)), config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               scanned_grads, jax.tree.map(np.asarray, unrolled_grads))
  # The init of a scanned model has the scanned layout and logical axes name the layer axis.
  abstract = embedder.logical_axes(scanned_config)
  assert abstract["encoder"]["layers"]["mlp_in" if family == "bert" else "mlp_up"]["kernel"][0] == "layers"
  back = embedder.layer_layout(scanned, config)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


@pytest.mark.parametrize("shape", [(4, 96, 384), (3, 7, 5)])  # odd sizes: a half-used last word
def test_dropout_drops_its_rate_and_keeps_the_mean(shape):
  from gembed.models.bert import Dropout
  x = jnp.ones(shape, jnp.float32)
  layer = Dropout(0.1)
  assert layer.apply({}, x, deterministic=True) is x
  out = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)}))
  dropped = (out == 0).mean()
  tolerance = 4 * np.sqrt(0.1 * 0.9 / x.size)  # four binomial standard deviations
  assert abs(dropped - 0.1) < tolerance, dropped
  np.testing.assert_allclose(out[out != 0], 1 / (1 - 6554 / 2**16), rtol=1e-6)
  again = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  assert (np.asarray(again) != out).any()  # another key, another mask
  assert (np.asarray(Dropout(0.0).apply({}, x, deterministic=False,
                                        rngs={"dropout": jax.random.PRNGKey(0)})) == 1).all()
