"""A train step on 8 simulated devices equals the single-device step.

Loss and metrics agree to 1e-5; gradients to 1e-5 plus 1e-6 of their leaf's largest entry: an
entry summed over every token (the token-type embedding's) rounds at the scale of the leaf's big
entries, not of its own value (measured: 1.8e-5 on an entry of 0.53 in a leaf reaching 80, on a
2x4 mesh of an AVX-512 machine). Updated parameters are compared at 2 x lr: AdamW
normalises each update to about lr, so a parameter whose true gradient is ~0 can step the other
way when the sharded sum rounds differently (measured: 1.7e-5 at lr 2e-5 on a 2x4 mesh)."""

import functools
import re

import chex
import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from gembed import sharding
from gembed.models import embedder
from gembed.optim import make_optimizer
from gembed.state import abstract_train_state, init_train_state, jit_train_step
from gembed.steps import LossConfig, loss_fn
from gembed.tools.aot import abstract_batch
from tiny import TINY, random_batch

CONFIG = TINY.replace(projection_dim=24)
LOSS = LossConfig(temperature=0.05, dims=(24, 12, 6))
LEARNING_RATE = 2e-5


QUERY_LENGTH, DOCUMENT_LENGTH = 12, 16


def _run_config(batch=8, num_negatives=2):
  """A run config with the batch and loss of these tests (gembed.state.jit_train_step reads it)."""
  c = common.get_base_config()
  c.data.global_batch_size, c.data.num_negatives = batch, num_negatives
  c.data.query_length, c.data.document_length = QUERY_LENGTH, DOCUMENT_LENGTH
  c.loss.temperature, c.loss.mrl_dims = LOSS.temperature, LOSS.dims
  return c


def _optim():
  c = ml_collections.ConfigDict(dict(name="adamw", learning_rate=LEARNING_RATE, warmup_steps=0,
                                     total_steps=10, decay="constant", end_factor=0.0,
                                     weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0))
  return make_optimizer(c)


def _run(mesh):
  """Loss, gradients, updated params and metrics of the trainer's own step (gembed.state)."""
  optimizer, schedule = _optim()
  abstract = abstract_train_state(CONFIG, optimizer, mesh)
  state = init_train_state(embedder.init_params(CONFIG, jax.random.PRNGKey(0)), optimizer,
                           jax.random.PRNGKey(1), abstract)
  batch = jax.device_put(random_batch(0), sharding.batch_sharding(mesh))
  with sharding.step_context(mesh):
    grads_fn = jax.jit(jax.value_and_grad(functools.partial(loss_fn, model_config=CONFIG,
                                                            loss_config=LOSS), has_aux=True))
    (loss, _), grads = grads_fn(state.params, batch, None)
  step = jit_train_step(_run_config(), CONFIG, optimizer, schedule, abstract, mesh)
  new_state, metrics = step(state, batch)
  return jax.device_get((loss, grads, new_state.params, metrics))


@functools.lru_cache(maxsize=1)
def _single_device_reference():
  return _run(sharding.make_mesh((1, 1, 1), jax.devices()[:1]))


def _assert_close_at_leaf_scale(actual, desired):
  np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5 + 1e-6 * np.abs(desired).max())


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(shape):
  assert jax.device_count() == 8
  reference = _single_device_reference()
  sharded = _run(sharding.make_mesh(shape))
  chex.assert_trees_all_close(sharded[0], reference[0], atol=1e-5, rtol=1e-5)
  jax.tree.map(_assert_close_at_leaf_scale, sharded[1], reference[1])
  chex.assert_trees_all_close(sharded[2], reference[2], atol=2 * LEARNING_RATE, rtol=1e-5)
  chex.assert_trees_all_close(sharded[3], reference[3], atol=1e-5, rtol=1e-5)


def test_fsdp_really_shards_parameters():
  mesh = sharding.make_mesh((2, 4, 1))
  params = embedder.init_params(CONFIG, jax.random.PRNGKey(0))
  shardings = sharding.param_shardings(embedder.logical_axes(CONFIG), params, mesh)
  kernel = shardings["encoder"]["layer_0"]["mlp_in"]["kernel"]
  assert kernel.spec[0] == "fsdp"  # embed dim over fsdp
  placed = jax.device_put(params["encoder"]["layer_0"]["mlp_in"]["kernel"], kernel)
  assert placed.addressable_shards[0].data.shape == (32 // 4, 64)


def test_mesh_presets_and_errors():
  assert sharding.mesh_shape("data", 8) == (8, 1, 1)
  assert sharding.mesh_shape("data_fsdp", 8) == (2, 4, 1)
  with pytest.raises(ValueError, match="does not divide"):
    sharding.mesh_shape((3, -1, 1), 8)


# Compiled-step checks: what the logical-axis rules promise, read off the HLO XLA compiles.
GLOBAL_BATCH = 16


def _compiled_hlo(shape) -> str:
  mesh = sharding.make_mesh(shape)
  optimizer, schedule = _optim()
  config = _run_config(batch=GLOBAL_BATCH, num_negatives=1)
  abstract = abstract_train_state(CONFIG, optimizer, mesh)
  step = jit_train_step(config, CONFIG, optimizer, schedule, abstract, mesh)
  return step.lower(abstract, abstract_batch(config, mesh)).compile().as_text()


def _all_gathers(hlo: str) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, result shape) of every all-gather in compiled HLO text."""
  found = re.findall(r"= (\w+)\[([\d,]*)\]\{[^}]*\} all-gather(?:-start)?\(", hlo)
  return [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in found]


def _whole_activations(gathers) -> list:
  """Gathered float arrays holding the hidden states (or attention heads) of every row, on every
  device: rank >= 3 led by the global batch, or led by the global batch's tokens (the rows of a
  dense layer's 2-D matmul, batch and length merged)."""
  every_token = {GLOBAL_BATCH * length for length in (QUERY_LENGTH, DOCUMENT_LENGTH)}
  return [(dtype, shape) for dtype, shape in gathers if dtype.startswith(("f", "bf")) and (
      (len(shape) >= 3 and shape[0] == GLOBAL_BATCH) or shape[0] in every_token)]


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (4, 1, 2), (2, 2, 2)],
                         ids=["data", "fsdp", "data_tensor", "data_fsdp_tensor"])
def test_compiled_step_keeps_activations_batch_sharded(shape):
  hlo = _compiled_hlo(shape)
  gathers = _all_gathers(hlo)
  shapes = [shape for _, shape in gathers]
  # In-batch negatives span the global batch: the pooled embeddings are all-gathered (XLA may
  # gather them transposed)...
  assert {(GLOBAL_BATCH, CONFIG.projection_dim), (CONFIG.projection_dim, GLOBAL_BATCH)} & set(shapes)
  # ...but no layer's activations are: each device keeps its own rows through the encoder.
  assert not _whole_activations(gathers), gathers
  if shape[1] > 1:  # fsdp: weights are stored sharded and gathered where they are used, as the
    # 2-D matmul operands of the dense layers (lora.matmul_2d: attention's heads dims merged),
    # each device's tensor-axis slice of them
    tensor = shape[2]
    assert (CONFIG.hidden_size, CONFIG.intermediate_size // tensor) in shapes, shapes
    assert (CONFIG.hidden_size, CONFIG.num_heads * CONFIG.head_dim // tensor) in shapes, shapes
  if shape[2] > 1:  # tensor: row-parallel projections end in an all-reduce of partial sums
    assert "all-reduce" in hlo


def test_without_the_rules_fsdp_gathers_whole_activations():
  """The check above can fail: traced under the fsdp mesh without the rules (the models'
  constraints then do nothing), XLA all-gathers every row's attention heads."""
  mesh = sharding.make_mesh((1, 8, 1))
  optimizer, schedule = _optim()
  config = _run_config(batch=GLOBAL_BATCH, num_negatives=1)
  abstract = abstract_train_state(CONFIG, optimizer, mesh)
  step = jit_train_step(config, CONFIG, optimizer, schedule, abstract, mesh)
  with jax.set_mesh(mesh):  # the mesh alone, not sharding.step_context
    hlo = step.jitted.lower(abstract, abstract_batch(config, mesh)).compile().as_text()
  assert _whole_activations(_all_gathers(hlo))
