"""Model soups: pure averages, sharded averages, greedy selection, and `gembed soup` end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gembed import checkpoint, soup
from gembed.cli import command as cli
from gembed.formats import modeldir
from gembed.formats.modeldir import ModelInfo
from gembed.models.embedder import init_params
from tiny import TINY

CONFIG = TINY.replace(projection_dim=16)


def _params(seed, config=CONFIG):
  return jax.tree.map(np.asarray, init_params(config, jax.random.PRNGKey(seed)))


def _allclose(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


def test_soup_of_one_model_is_that_model():
  a = _params(0)
  _allclose(soup.uniform_average([a]), a, rtol=0, atol=0)


def test_soup_of_identical_models_is_identity():
  a = _params(0)
  _allclose(soup.uniform_average([a, a, a]), a, rtol=1e-7, atol=1e-7)
  _allclose(soup.weighted_average([a, a], [0.3, 5.0]), a, rtol=1e-6, atol=1e-7)


def test_weights_are_normalised():
  a, b = _params(0), _params(1)
  expected = jax.tree.map(lambda x, y: 0.25 * x + 0.75 * y, a, b)
  _allclose(soup.weighted_average([a, b], [1.0, 3.0]), expected, rtol=1e-6, atol=1e-7)
  _allclose(soup.weighted_average([a, b], [2.0, 2.0]), soup.uniform_average([a, b]),
            rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(soup.normalized_weights([2, 6], 2), [0.25, 0.75])
  for bad in ([1.0, -1.0], [0.0, 0.0], [1.0]):
    with pytest.raises(soup.SoupError, match="weight"):
      soup.normalized_weights(bad, 2)


def test_mismatched_trees_name_the_first_differing_path_and_shapes():
  a = _params(0)
  wider = _params(0, CONFIG.replace(projection_dim=24))
  with pytest.raises(soup.SoupError, match=r"\['projection'\]\['bias'\].*\(16,\).*\(24,\)"):
    soup.check_same_structure([a, wider], ["run-a", "run-b"])
  headless = _params(0, CONFIG.replace(projection_dim=0))
  with pytest.raises(soup.SoupError, match=r"projection.*run-b has missing"):
    soup.check_same_structure([a, headless], ["run-a", "run-b"])


def test_average_accumulates_in_float32_and_keeps_dtype():
  # Mean of six 1.0 and one 1.25 is 1.0357; summed in bfloat16 it comes out as 1.03125, summed
  # in float32 and rounded once it is the nearest bfloat16, 1.0390625.
  trees = [{"w": jnp.ones((4,), jnp.bfloat16)}] * 6 + [{"w": jnp.full((4,), 1.25, jnp.bfloat16)}]
  out = soup.uniform_average(trees)
  assert out["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out["w"], np.float32), 1.0390625)


def test_sharded_average_equals_host_average_and_keeps_sharding():
  from gembed import sharding
  from gembed.models import embedder
  mesh = sharding.make_mesh("2,4,1")
  shardings = sharding.param_shardings(embedder.logical_axes(CONFIG), _params(0), mesh)
  trees = [_params(s) for s in range(3)]
  on_mesh = [jax.device_put(t, shardings) for t in trees]
  out = jax.jit(lambda ts: soup.weighted_average(ts, [1.0, 2.0, 3.0]))(on_mesh)
  _allclose(out, soup.weighted_average(trees, [1.0, 2.0, 3.0]), rtol=1e-6, atol=1e-7)
  kernel = out["projection"]["kernel"]
  assert kernel.sharding.is_equivalent_to(shardings["projection"]["kernel"], kernel.ndim)


def test_greedy_soup_keeps_candidates_only_when_the_dev_score_holds():
  target = {"w": np.array([1.0, 1.0], np.float32)}
  candidates = {"a": np.array([1.2, 0.8]), "b": np.array([0.8, 1.2]), "c": np.array([3.0, -2.0]),
                "d": np.array([1.1, 1.1])}

  def score(p):  # dev score: closeness to target (higher is better)
    return -float(np.sum((np.asarray(p["w"]) - target["w"]) ** 2))

  loads = [(n, (lambda v=v: {"w": v.astype(np.float32)})) for n, v in candidates.items()]
  params, steps = soup.greedy_soup(loads, score)
  # Own scores: d -0.02, a -0.08, b -0.08, c -13. Order d, a, b (stable), c.
  assert [s.name for s in steps] == ["d", "a", "b", "c"]
  # d+a: mean (1.15, 0.95) -> -0.025 < -0.02: dropped. d+b: (0.95, 1.15) -> -0.025: dropped.
  # d+c: (2.05, -0.45) -> far worse: dropped.
  assert [s.kept for s in steps] == [True, False, False, False]
  np.testing.assert_allclose(steps[1].soup_score, -0.025, rtol=1e-5)
  np.testing.assert_allclose(params["w"], [1.1, 1.1], rtol=1e-6)

  loads = [(n, (lambda v=v: {"w": v.astype(np.float32)})) for n, v in
           [("a", candidates["a"]), ("b", candidates["b"]), ("c", candidates["c"])]]
  params, steps = soup.greedy_soup(loads, score)
  # a then b: mean (1, 1) is the target -> kept; c then drops.
  assert [(s.name, s.kept) for s in steps] == [("a", True), ("b", True), ("c", False)]
  np.testing.assert_allclose(params["w"], [1.0, 1.0], rtol=1e-6)


def _write_model(path, params, tokenizer_file, config=CONFIG):
  info = ModelInfo(config=config, tokenizer_file=tokenizer_file, max_length=32,
                   mrl_dims=(16, 8))
  modeldir.write_model_info(info, str(path))
  checkpoint.save_params(os.path.join(str(path), modeldir.PARAMS_SUBDIR), params)
  return str(path)


def test_soup_command_writes_a_model_directory_with_its_log(tmp_path, minilm_dir, capsys):
  tokenizer = os.path.join(minilm_dir, "tokenizer.json")
  a, b = _params(0), _params(1)
  ma = _write_model(tmp_path / "a", a, tokenizer)
  mb = _write_model(tmp_path / "b", b, tokenizer)
  out = tmp_path / "soup"
  assert cli.main(["soup", "--model", ma, "--model", mb, "--weights", "1", "3",
                   "--output", str(out)]) == 0
  info, params = modeldir.load_model(str(out))
  assert info.mrl_dims == (16, 8) and info.config == CONFIG
  _allclose(params, jax.tree.map(lambda x, y: 0.25 * x + 0.75 * y, a, b), rtol=1e-6, atol=1e-7)
  log = json.loads((out / soup.SOUP_LOG).read_text())
  assert log["method"] == "weighted" and log["weights"] == {ma: 0.25, mb: 0.75}

  wide = _write_model(tmp_path / "wide", _params(0, CONFIG.replace(projection_dim=24)), tokenizer,
                      CONFIG.replace(projection_dim=24))
  assert cli.main(["soup", "--model", ma, "--model", wide, "--output", str(tmp_path / "x")]) == 2
  assert "projection_dim: " in capsys.readouterr().err
  assert cli.main(["soup", "--model", ma, "--model", mb, "--greedy",
                   "--output", str(tmp_path / "y")]) == 2
  assert "--greedy needs --dev-data" in capsys.readouterr().err


def test_greedy_soup_command_scores_candidates_on_dev_sets(tmp_path, minilm_dir):
  tokenizer = os.path.join(minilm_dir, "tokenizer.json")
  models = [_write_model(tmp_path / f"m{i}", _params(i), tokenizer) for i in range(3)]
  dev = tmp_path / "dev" / "sts" / "toy"
  dev.mkdir(parents=True)
  rows = [("a man is playing a guitar", "a person plays guitar", 4.5),
          ("a woman slices an onion", "someone is cutting an onion", 4.0),
          ("the cat sleeps on the sofa", "stock markets fell sharply", 0.2),
          ("a child rides a bike", "a kid is riding a bicycle", 4.8),
          ("the sun is shining", "it is raining heavily", 1.0)]
  (dev / "dev.jsonl").write_text("".join(
      json.dumps({"sentence1": s1, "sentence2": s2, "score": sc}) + "\n" for s1, s2, sc in rows))
  out = tmp_path / "greedy"
  assert cli.main(["soup", *sum((["--model", m] for m in models), []), "--greedy",
                   "--dev-data", str(tmp_path / "dev"), "--output", str(out)]) == 0
  log = json.loads((out / soup.SOUP_LOG).read_text())
  assert log["method"] == "greedy" and len(log["steps"]) == 3
  own = [s["own_score"] for s in log["steps"]]
  assert own == sorted(own, reverse=True)  # tried best-first
  kept_scores = [s["soup_score"] for s in log["steps"] if s["kept"]]
  assert kept_scores == sorted(kept_scores)  # a kept candidate never lowers the soup's score
  assert abs(sum(log["weights"].values()) - 1.0) < 1e-9
  _, params = modeldir.load_model(str(out))
  kept = [dict(zip(models, [_params(i) for i in range(3)]))[m] for m in log["kept"]]
  _allclose(params, soup.uniform_average(kept), rtol=1e-6, atol=1e-6)
