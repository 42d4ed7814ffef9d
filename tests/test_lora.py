"""Task adapters (LoRA): identity at init, merge, a frozen base under the real train step, the
optimizer state they need, and the trainer's adapter directory through encode and export."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_data
from gembed import sharding
from gembed.encode import TextEncoder
from gembed.formats import modeldir
from gembed.models import embedder, lora
from gembed.optim import make_optimizer
from gembed.state import abstract_train_state, init_train_state, initial_params, jit_train_step
from configs import common
from tiny import TINY, make_tiny_bert_dir, random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = {"bert": TINY, "llama": TINY.replace(family="llama", num_kv_heads=2)}


def _inputs():
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 2000, size=(4, 12), dtype=np.int32)
  mask = (np.arange(12) < np.array([[12], [7], [3], [10]])).astype(np.int32)
  return ids * mask, mask


def _perturbed(params, seed=1, scale=0.05):
  """Every lora_b set to random values: an adapter that changes the model."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (rng.normal(size=x.shape) * scale).astype(np.float32)
      if path[-1].key == lora.B else np.asarray(x), params)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_start_as_the_base_model_and_merge_into_it(family):
  base_config = FAMILIES[family]
  config = base_config.replace(lora_rank=4, lora_targets=("query", "value", "out", "mlp_in", "mlp_out"))
  base = jax.tree.map(np.asarray, embedder.init_params(base_config, jax.random.PRNGKey(0)))
  params = initial_params(base_config, base, config, jax.random.PRNGKey(1))
  assert "lora_a" not in params["encoder"]["layer_0"]["attention"]["key"]
  ids, mask = _inputs()
  want = embedder.apply_model(base_config, base, ids, mask)
  np.testing.assert_array_equal(embedder.apply_model(config, params, ids, mask), want)

  adapted = _perturbed(params)
  got = embedder.apply_model(config, adapted, ids, mask)
  assert float(jnp.abs(got - want).max()) > 1e-2  # the adapter is live
  merged, merged_config = lora.merge(adapted, config)
  assert merged_config.lora_rank == 0
  assert jax.tree.structure(merged) == jax.tree.structure(base)
  np.testing.assert_allclose(embedder.apply_model(merged_config, merged, ids, mask), got, atol=2e-5)
  # Stacked (nn.scan) layers merge per layer.
  scanned = config.replace(scan_layers=True)
  merged_scan, _ = lora.merge(embedder.layer_layout(adapted, scanned), scanned)
  np.testing.assert_allclose(
      embedder.apply_model(merged_config.replace(scan_layers=True), merged_scan, ids, mask), got,
      atol=2e-5)


def _state_bytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_train_steps_update_only_the_adapters_and_skip_frozen_gradients():
  c = common.get_base_config()
  c.optim.learning_rate = 1e-2
  c.data.global_batch_size = 8
  c.loss.mrl_dims = (32,)
  base_config, config = TINY, TINY.replace(lora_rank=4)
  base = jax.tree.map(np.asarray, embedder.init_params(base_config, jax.random.PRNGKey(0)))
  params = initial_params(base_config, base, config, jax.random.PRNGKey(1))
  mesh = sharding.make_mesh("data", jax.devices()[:1])
  batch = random_batch(0)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
                    for k, v in batch.items()}
  flops, opt_bytes = {}, {}
  for name, cfg, p in (("full", base_config, base), ("lora", config, params)):
    optimizer, schedule = make_optimizer(c.optim, frozen_base=bool(cfg.lora_rank))
    abstract = abstract_train_state(cfg, optimizer, mesh)
    step = jit_train_step(c, cfg, optimizer, schedule, abstract, mesh)
    flops[name] = step.lower(abstract, abstract_batch).compile().cost_analysis()["flops"]
    state = init_train_state(p, optimizer, jax.random.PRNGKey(2), abstract)
    opt_bytes[name] = _state_bytes(state.opt_state)
  for _ in range(2):
    state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  trained, frozen = lora.split(jax.tree.map(np.asarray, state.params))
  _, frozen_before = lora.split(params)
  jax.tree.map(np.testing.assert_array_equal, frozen, frozen_before)  # the base, bit-identical
  trained_before, _ = lora.split(params)
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a != b).any()), trained, trained_before)))
  # Moments (2 x float32) for the adapters alone, plus the step counts.
  n_trained = sum(x.size for x in jax.tree.leaves(trained))
  assert 8 * n_trained <= opt_bytes["lora"] < 8 * n_trained + 64
  assert opt_bytes["full"] > 8 * sum(x.size for x in jax.tree.leaves(base))
  # No weight gradient of a frozen kernel: measured 55.0 vs 81.4 MFLOP per step.
  assert flops["lora"] < 0.75 * flops["full"], flops


def test_sharded_adapter_step_equals_single_device():
  c = common.get_base_config()
  c.optim.learning_rate = 1e-3
  c.data.global_batch_size = 8
  c.loss.mrl_dims = (32,)
  config = TINY.replace(lora_rank=4)
  base = jax.tree.map(np.asarray, embedder.init_params(TINY, jax.random.PRNGKey(0)))
  params = initial_params(TINY, base, config, jax.random.PRNGKey(1))
  optimizer, schedule = make_optimizer(c.optim, frozen_base=True)
  ends = []
  for mesh in (sharding.make_mesh("data", jax.devices()[:1]), sharding.make_mesh("2,4,1")):
    abstract = abstract_train_state(config, optimizer, mesh)
    step = jit_train_step(c, config, optimizer, schedule, abstract, mesh)
    state = init_train_state(params, optimizer, jax.random.PRNGKey(2), abstract)
    for seed in range(2):
      state, _ = step(state, random_batch(seed))
    ends.append(jax.tree.map(np.asarray, lora.split(state.params)[0]))
  # A 2x4 mesh sums in another order: tolerances as in shared/docs/pitfalls.md.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), *ends)


def test_minilm_adapter_memory_and_merged_embeddings(minilm):
  info, base = minilm
  config = info.config.replace(lora_rank=8)
  params = initial_params(info.config, base, config, jax.random.PRNGKey(0))
  c = common.get_base_config()
  full_opt = jax.eval_shape(make_optimizer(c.optim)[0].init, base)
  lora_opt = jax.eval_shape(make_optimizer(c.optim, frozen_base=True)[0].init, params)
  n_trained = sum(x.size for x in jax.tree.leaves(lora.split(params)[0]))
  n_base = sum(x.size for x in jax.tree.leaves(base))
  assert n_trained == 6 * (4 * (384 * 8 + 8 * 384) + 2 * (384 * 8 + 8 * 1536))  # 331,776
  assert n_trained / n_base < 0.05 and _state_bytes(lora_opt) / _state_bytes(full_opt) < 0.05

  rows = shared_data("classification/banking77/test.jsonl").read_text().splitlines()[::100]
  texts = [json.loads(r)["text"] for r in rows]
  adapted = _perturbed(params, scale=0.02)
  merged_info, merged = modeldir.merged(dataclasses.replace(info, config=config), adapted)
  want = TextEncoder(dataclasses.replace(info, config=config), adapted).encode(texts)
  got = TextEncoder(merged_info, merged).encode(texts)
  plain = TextEncoder(info, base).encode(texts)
  assert np.sum(want * plain, axis=1).min() < 0.99  # the adapter changes the embeddings
  assert np.sum(want * got, axis=1).min() > 0.9999


def test_trainer_writes_an_adapter_that_encode_and_export_read(minilm_dir, tmp_path):
  model = make_tiny_bert_dir(tmp_path / "tiny-bert", os.path.join(minilm_dir, "tokenizer.json"))
  (tmp_path / "data" / "banking77").mkdir(parents=True)
  labels = ["card arrival", "lost card", "exchange rate", "top up"]
  with open(tmp_path / "data" / "banking77" / "train.jsonl", "w") as f:
    for i in range(40):
      f.write(json.dumps({"text": f"question {i} about {labels[i % 4]}", "label": labels[i % 4]}) + "\n")
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "gembed.main", "--config", f"{ROOT}/configs/adapter.py:tiny",
       "--workdir", str(workdir), f"--config.model.init={model}",
       f"--config.data.dir={tmp_path / 'data'}", "--config.loss.mrl_dims=(32, 16)",
       "--config.model.lora_rank=2"], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  adapter_dir = workdir / "adapter"
  meta = json.loads((adapter_dir / "adapter.json").read_text())
  assert meta["base"] == model and meta["step"] == 4
  assert meta["model"]["config"]["lora_rank"] == 2

  texts = ["question about a lost card", "exchange rate today", "top up failed"]
  info, params = modeldir.load_model(str(workdir))
  base_info, base = modeldir.load_model(model)
  _, frozen = lora.split(params)
  jax.tree.map(np.testing.assert_array_equal, frozen, base)  # the checkpoint's base is untouched
  want = TextEncoder(info, params).encode(texts)
  a_info, a_params = modeldir.load_model(model, str(adapter_dir))
  assert a_info.query_prompt == info.query_prompt and a_info.mrl_dims == (32, 16)
  np.testing.assert_allclose(TextEncoder(a_info, a_params).encode(texts), want, atol=1e-6)
  assert np.abs(TextEncoder(base_info, base).encode(texts) - want).max() > 1e-4

  out = tmp_path / "export"
  exported = subprocess.run([sys.executable, "-m", "gembed.cli", "export", "--model", model,
                             "--adapter", str(adapter_dir), "--output", str(out)],
                            env=env, capture_output=True, text=True, timeout=600)
  assert exported.returncode == 0, exported.stderr[-3000:]
  e_info, e_params = modeldir.load_model(str(out))
  assert e_info.config.lora_rank == 0
  np.testing.assert_allclose(TextEncoder(e_info, e_params).encode(texts), want, atol=1e-5)
  with pytest.raises(ValueError, match="another architecture"):
    modeldir.load_model(modeldir.default_model_dir(), str(adapter_dir))
