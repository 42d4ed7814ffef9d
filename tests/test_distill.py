"""Embedding distillation: the two loss terms against NumPy, a student made of its teacher's own
layers, both terms falling in real steps, GradCache with a teacher equal to the plain step on 8
devices, the trainer end to end (teacher directory -> shallower student directory) with the
teacher in the step or its embeddings precomputed (`gembed teacher-embed`), and the store."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from gembed import losses, sharding
from gembed.formats import modeldir
from gembed.models import embedder
from gembed.state import model_config_for_run
from gembed.steps import LossConfig, TrainState, train_step
from tiny import TINY, make_tiny_bert_dir, random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT = TINY.replace(projection_dim=24, num_layers=1)
TEACHER = TINY.replace(projection_dim=32)
LOSS = LossConfig(temperature=0.05, dims=(24, 12), distill_embedding=1.0, distill_similarity=1.0)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_similarity_distillation_equals_numpy():
  rng = np.random.default_rng(0)
  q, d = rng.normal(size=(5, 16)), rng.normal(size=(9, 16))
  tq, td = rng.normal(size=(5, 24)), rng.normal(size=(9, 24))
  valid = np.array([1, 1, 1, 1, 1, 0, 1, 0, 1], bool)
  want = 0.0
  for dim in (16, 8):
    t = _log_softmax((_unit(tq) @ _unit(td).T / 0.05)[:, valid])
    s = _log_softmax((_unit(q[:, :dim]) @ _unit(d[:, :dim]).T / 0.05)[:, valid])
    want += np.mean(np.sum(np.exp(t) * (t - s), axis=1)) / 2
  got = losses.similarity_distillation_loss(q, d, tq, td, valid, dims=(16, 8), temperature=0.05)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  same = losses.similarity_distillation_loss(tq, td, tq, td, dims=(24,), temperature=0.05)
  np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_embedding_distillation_equals_numpy():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(6, 8)), rng.normal(size=(6, 12))
  valid = np.array([1, 1, 0, 1, 1, 1], bool)
  cut = teacher[:, :8]  # a narrower student matches the teacher's MRL prefix
  cosine = 1 - np.sum(_unit(student) * _unit(cut), axis=1)
  np.testing.assert_allclose(losses.embedding_distillation_loss(student, teacher, valid),
                             cosine[valid].mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.embedding_distillation_loss(student, teacher, kind="mse"),
                             np.mean((student - cut) ** 2), rtol=1e-5)
  with pytest.raises(ValueError, match="wider than the teacher"):
    losses.embedding_distillation_loss(teacher, student)


def test_student_keeps_the_named_layers_of_its_teacher():
  teacher = embedder.init_params(TINY.replace(num_layers=4), jax.random.PRNGKey(0))
  student = embedder.keep_layers(teacher, TINY.replace(num_layers=4), (1, 3))
  assert sorted(k for k in student["encoder"] if k.startswith("layer_")) == ["layer_0", "layer_1"]
  chex.assert_trees_all_equal(student["encoder"]["layer_1"], teacher["encoder"]["layer_3"])
  chex.assert_trees_all_equal(student["encoder"]["token_embed"], teacher["encoder"]["token_embed"])
  cfg = common.get_base_config().model
  cfg.projection_dim, cfg.keep_layers = 0, (1, 3)
  assert model_config_for_run(TINY.replace(num_layers=4), cfg).num_layers == 2
  cfg.keep_layers = (3, 1)
  with pytest.raises(ValueError, match="keep_layers"):
    model_config_for_run(TINY.replace(num_layers=4), cfg)


def _state(optimizer, seed=0):
  params = embedder.init_params(STUDENT, jax.random.PRNGKey(seed))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    rng=jax.random.PRNGKey(seed))


def _step(optimizer, chunk=0, loss_config=LOSS):
  return jax.jit(functools.partial(
      train_step, model_config=STUDENT, loss_config=loss_config, optimizer=optimizer,
      schedule=lambda _: 0.0, grad_cache_chunk=chunk, teacher_config=TEACHER))


def test_each_distillation_term_falls_in_training():
  """Distillation alone (a random teacher's geometry would fight the contrastive term)."""
  optimizer = optax.adam(3e-3)
  teacher = embedder.init_params(TEACHER, jax.random.PRNGKey(7))
  state = _state(optimizer)
  step = _step(optimizer, loss_config=dataclasses.replace(LOSS, contrastive_weight=0.0))
  batch = random_batch(0, batch=16, num_negatives=1)
  history = []
  for _ in range(30):
    state, metrics = step(state, batch, teacher)
    history.append(jax.device_get(metrics))
  for term in ("distill_embedding", "distill_similarity"):
    assert history[-1][term] < 0.5 * history[0][term], (term, history[0][term], history[-1][term])


def test_grad_cache_with_teacher_equals_the_plain_step_on_eight_devices():
  optimizer = optax.sgd(0.1)
  teacher = embedder.init_params(TEACHER, jax.random.PRNGKey(7))
  batch = random_batch(1, batch=16, num_negatives=2)
  plain = _step(optimizer)(_state(optimizer), batch, teacher)
  mesh = sharding.make_mesh((8, 1, 1))
  placed = lambda tree, config: jax.device_put(tree, sharding.param_shardings(
      embedder.logical_axes(config), tree, mesh))
  state = _state(optimizer)
  state = state.replace(params=placed(state.params, STUDENT))
  with mesh:
    cached = _step(optimizer, chunk=8)(state, jax.device_put(batch, sharding.batch_sharding(mesh)),
                                       placed(teacher, TEACHER))
  chex.assert_trees_all_close(jax.device_get(cached[1]), jax.device_get(plain[1]),
                              atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(jax.device_get(cached[0].params), jax.device_get(plain[0].params),
                              atol=1e-5, rtol=1e-5)


def _step_metrics(stderr: str, step: int) -> dict:
  line = next(l for l in stderr.splitlines() if f"gembed.train: step {step}: " in l and "=" in l)
  return {k: float(v) for k, v in (kv.split("=") for kv in line.split(f"step {step}: ")[1].split(", "))}


def test_trainer_distils_with_the_teacher_in_the_step_or_precomputed(tmp_path, minilm_dir):
  """The trainer end to end: a teacher directory -> a student of its layers, the teacher in the
  step; then `gembed teacher-embed` and `distill.teacher_embeddings`: the same run (same
  first-step losses, to the store's float16) without the teacher in the step."""
  teacher = make_tiny_bert_dir(tmp_path / "teacher", os.path.join(minilm_dir, "tokenizer.json"))
  data = tmp_path / "data"
  data.mkdir()
  words = "cat dog bird fish tree house car road sun moon star river hill sea".split()
  rng = np.random.default_rng(0)
  with open(data / "snli-triples.jsonl", "w") as f:
    for i in range(40):
      q = " ".join(rng.choice(words, 4))
      row = {"query": q, "positive": q + " sea"}
      if i % 3:  # some rows without a hard negative: their slot has no teacher embedding
        row["negative"] = " ".join(rng.choice(words, 5))
      f.write(json.dumps(row) + "\n")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  common_args = ["--config", os.path.join(ROOT, "configs/distill.py:tiny"),
                 f"--config.model.init={teacher}", f"--config.distill.teacher={teacher}",
                 f"--config.data.dir={data}", "--config.optim.total_steps=1"]
  store = tmp_path / "teacher-embeddings"
  made = subprocess.run([sys.executable, "-m", "gembed.cli", "teacher-embed", *common_args,
                         "--out", str(store)], env=env, capture_output=True, text=True, timeout=600)
  assert made.returncode == 0, made.stderr[-3000:]
  manifest = json.loads(made.stdout.strip().splitlines()[-1])
  assert manifest["count"] == 40 + 40 + 26 and manifest["dim"] == 32  # queries, positives, negatives
  runs = {}
  for name, extra in (("in_step", []), ("precomputed", [f"--config.distill.teacher_embeddings={store}"])):
    result = subprocess.run([sys.executable, "-m", "gembed.main", *common_args, *extra,
                             "--workdir", str(tmp_path / name)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs[name] = result.stderr
  assert "distilling from" in runs["in_step"] and "distill_similarity=" in runs["in_step"]
  assert "precomputed embeddings" in runs["precomputed"]
  info, params = modeldir.load_model(str(tmp_path / "in_step"))
  assert info.config.num_layers == 1
  assert [k for k in params["encoder"] if k.startswith("layer_")] == ["layer_0"]
  in_step, precomputed = (_step_metrics(runs[n], 1) for n in ("in_step", "precomputed"))
  for key in ("distill_embedding", "distill_similarity", "loss"):
    np.testing.assert_allclose(precomputed[key], in_step[key], rtol=3e-3, err_msg=key)


def test_teacher_store_looks_up_by_side_and_text_and_names_a_missing_text(tmp_path):
  from gembed.data import teacher_store

  keys = [teacher_store.text_key("query", "a cat"), teacher_store.text_key("document", "a cat"),
          teacher_store.text_key("document", "a dog")]
  vectors = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
  teacher_store.write(str(tmp_path), keys, vectors, teacher="T", query_length=8,
                      document_length=16, shard_rows=2)
  store = teacher_store.TeacherStore(str(tmp_path))
  np.testing.assert_array_equal(store.lookup("query", b"a cat"), vectors[0])
  np.testing.assert_array_equal(store.lookup("document", "a cat"), vectors[1])
  np.testing.assert_array_equal(store.lookup("document", "a dog"), vectors[2])  # second shard
  with pytest.raises(KeyError, match="no query embedding for 'a dog'"):
    store.lookup("query", "a dog")
  with pytest.raises(ValueError, match=r"lengths \(8, 16\), this run has \(8, 32\)"):
    store.check_lengths(8, 32)
