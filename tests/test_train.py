"""The real trainer on a tiny checkpoint: smoke, exact resume after SIGKILL or from behind an
unreadable checkpoint, quiet start-up, bad input."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gembed import checkpoint
from gembed.encode import TextEncoder
from gembed.formats import modeldir
from tiny import make_tiny_bert_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm_dir):
  base = tmp_path_factory.mktemp("train")
  model = make_tiny_bert_dir(base / "tiny-bert", os.path.join(minilm_dir, "tokenizer.json"))
  data = base / "data"
  data.mkdir()
  rng = np.random.default_rng(0)
  words = "cat dog bird fish tree house car road sun moon star river hill sea".split()
  for name, rows in (("snli-triples.jsonl", 60), ("xnli-triples.jsonl", 40)):
    with open(data / name, "w") as f:
      for i in range(rows):
        q = " ".join(rng.choice(words, 4))
        f.write(json.dumps({"query": q, "positive": q + " " + " ".join(rng.choice(words, 3)),
                            "negative": " ".join(rng.choice(words, 5))}) + "\n")
  return model, str(data)


def _args(workdir, model, data, steps=6, extra=()):
  return [sys.executable, "-m", "gembed.main", "--config", os.path.join(ROOT, "configs/finetune.py:tiny"),
          "--workdir", str(workdir), f"--config.model.init={model}", f"--config.data.dir={data}",
          "--config.model.projection_dim=16", "--config.loss.mrl_dims=(16, 8)",
          f"--config.train.steps={steps}", "--config.ckpt.every=4", "--config.model.dropout_rate=0.1",
          *extra]


# TensorFlow's, XLA's and absl's start-up lines (oneDNN and CUDA notices, C++ log lines).
STARTUP_LINE = re.compile(r"absl::InitializeLog|oneDNN|cuInit|cuda|^[IWEF]\d{4} \d\d:\d\d")


def _run(args, **kw):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as in a fresh shell: the entry point sets it
  return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_train_smoke_workdir_is_a_model(setup, tmp_path):
  model, data = setup
  workdir = tmp_path / "w"
  result = _run(_args(workdir, model, data, steps=6))
  assert result.returncode == 0, result.stderr[-3000:]
  assert checkpoint.checkpoint_steps(str(workdir)) == [4, 6]
  info, params = modeldir.load_model(str(workdir))
  assert info.config.projection_dim == 16 and info.mrl_dims == (16, 8)
  assert info.query_prompt == "task: {task} | query: {text}"
  emb = TextEncoder(info, params).encode(["cat dog"], task="search result", dim=8)
  assert emb.shape == (1, 8) and np.isclose(np.linalg.norm(emb), 1.0, atol=1e-5)
  steps = json.loads((workdir / "task_steps.json").read_text())
  assert sum(steps.values()) == 6 and set(steps) == {"snli", "xnli"}
  assert any(f.startswith("events") for f in os.listdir(workdir / "tensorboard"))
  peak_memory = re.findall(r"host_memory_peak_gib=([0-9.]+)", result.stderr)  # logged per line
  assert peak_memory and 0.1 < float(peak_memory[-1]) < 16, peak_memory
  # Stage 2 from stage 1: keeps the trained head, fresh optimizer, reads the workdir; its data
  # has a cut line and a line of invalid UTF-8, skipped under data.skip_bad_rows and named.
  bad_data = tmp_path / "bad-data"
  shutil.copytree(data, bad_data)
  with open(bad_data / "snli-triples.jsonl", "ab") as f:
    f.write(b'{"query": "cut short", "posi\n{"query": "caf\xe9", "positive": "x"}\n')
  stage2 = _run(_args(tmp_path / "w2", str(workdir), str(bad_data), steps=2,
                      extra=["--config.data.skip_bad_rows=True"]))
  assert stage2.returncode == 0, stage2.stderr[-3000:]
  _, params2 = modeldir.load_model(str(tmp_path / "w2"))
  assert params2["projection"]["kernel"].shape == (32, 16)
  named = (tmp_path / "w2" / "bad_rows.txt").read_text().splitlines()
  assert [line.split(": ")[0].rsplit("/", 1)[1] for line in named] == \
      ["snli-triples.jsonl:61", "snli-triples.jsonl:62"], named
  assert "invalid JSON" in named[0] and "invalid UTF-8" in named[1]


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
  """An uninterrupted 48-step run: what every resumed run must end equal to."""
  model, data = setup
  workdir = tmp_path_factory.mktemp("straight") / "w"
  result = _run(_args(workdir, model, data, steps=48))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _assert_same_end(workdir, straight, steps=48):
  a = checkpoint.load_workdir_params(str(straight), steps)
  b = checkpoint.load_workdir_params(str(workdir), steps)
  np.testing.assert_allclose(np.concatenate([v.ravel() for v in _leaves(b)]),
                             np.concatenate([v.ravel() for v in _leaves(a)]), atol=1e-6, rtol=0)
  assert json.loads((workdir / "task_steps.json").read_text()) == \
      json.loads((straight / "task_steps.json").read_text())


def test_sigkill_then_resume_is_exact(setup, straight, tmp_path):
  model, data = setup
  steps = 48
  workdir = tmp_path / "killed"
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(_args(workdir, model, data, steps=steps), env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not checkpoint.checkpoint_steps(str(workdir)):
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = checkpoint.checkpoint_steps(str(workdir))
  assert killed_at and killed_at[-1] < steps, f"not killed mid-run: {killed_at}"

  resumed = _run(_args(workdir, model, data, steps=steps))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {killed_at[-1]}" in resumed.stderr
  # The straight run compiled this shape into the suite's persistent cache: nothing compiles.
  assert ") read from the compilation cache in" in resumed.stderr, resumed.stderr[-3000:]
  assert ") compiled in" not in resumed.stderr
  _assert_same_end(workdir, straight, steps)


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(setup, straight, tmp_path):
  """The uninterrupted run's newest step with three tensor files truncated: a restart names it in
  one warning line, moves it aside (not deleted), resumes from the step before and ends equal to
  the uninterrupted run; at default verbosity, no start-up line of TensorFlow, XLA or absl."""
  model, data = setup
  workdir = tmp_path / "torn"
  shutil.copytree(straight, workdir)
  assert checkpoint.checkpoint_steps(str(workdir)) == [40, 44, 48]
  newest = workdir / "checkpoints" / "48"
  tensors = [p for p in (newest / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
  for path in sorted(tensors, key=lambda p: p.stat().st_size)[-3:]:  # the largest tensor files
    os.truncate(path, 10)

  resumed = _run(_args(workdir, model, data, steps=48))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  lines = resumed.stderr.splitlines()
  warnings = [line for line in lines if " WARNING " in line]
  assert len(warnings) == 1 and "checkpoint 48 is unreadable" in warnings[0], warnings
  assert "resumed from step 44 " in resumed.stderr
  assert "Traceback" not in resumed.stderr, resumed.stderr[-5000:]
  assert not [line for line in lines if STARTUP_LINE.search(line)], resumed.stderr[-5000:]
  assert (workdir / "checkpoints" / "48.unreadable" / "params").is_dir()
  _assert_same_end(workdir, straight)


def test_changed_input_pipeline_keeps_the_model_state(setup, straight, tmp_path):
  """Resumed with another input pipeline (length buckets off: the saved data iterator no longer
  restores), the run says so and continues from the checkpoint's model and optimizer state with
  the data from its first batch; nothing is moved aside."""
  model, data = setup
  workdir = tmp_path / "changed"
  shutil.copytree(straight, workdir)
  resumed = _run(_args(workdir, model, data, steps=52, extra=["--config.data.length_buckets=()"]))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  warnings = [line for line in resumed.stderr.splitlines() if " WARNING " in line]
  assert len(warnings) == 1 and "checkpoint 48: its data iterator does not restore" in warnings[0], \
      warnings
  assert "resumed from step 48 " in resumed.stderr
  assert checkpoint.checkpoint_steps(str(workdir)) == [44, 48, 52]
  assert not list((workdir / "checkpoints").glob("*.unreadable*"))


def _leaves(tree):
  import jax
  return jax.tree_util.tree_leaves(tree)


def test_sigterm_saves_then_stops(setup, tmp_path):
  model, data = setup
  workdir = tmp_path / "term"
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(_args(workdir, model, data, steps=100000, extra=["--config.ckpt.every=100000"]),
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not os.path.exists(workdir / "tensorboard"):
    time.sleep(0.1)
  time.sleep(3)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  steps = checkpoint.checkpoint_steps(str(workdir))
  assert len(steps) == 1 and 0 < steps[0] < 100000


def test_wrong_config_key_is_named(setup, tmp_path):
  model, data = setup
  result = _run(_args(tmp_path / "x", model, data, extra=["--config.optim.learning_rat=1e-3"]))
  assert result.returncode == 2
  assert "learning_rat" in result.stderr and "learning_rate" in result.stderr


def test_non_finite_loss_stops_without_checkpoint(setup, tmp_path):
  model, data = setup
  workdir = tmp_path / "nan"
  result = _run(_args(workdir, model, data, steps=4,
                      extra=["--config.optim.learning_rate=1e30", "--config.optim.clip_norm=0",
                             "--config.optim.name=sgd"]))
  assert result.returncode != 0
  assert "non-finite loss" in result.stderr
  assert checkpoint.checkpoint_steps(str(workdir)) == []
