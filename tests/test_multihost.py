"""A real multi-host run on this machine: two trainer processes x four CPU devices joined by
`jax.distributed` on localhost (gloo collectives), each reading its own shard of the data,
one task per global batch. One process is killed after a checkpoint, both are restarted and
resume; the end equals the one-process eight-device run of the same global batches (the
two hosts' batches side by side, as `make_array_from_process_local_data` lays them out).

One run on a data x fsdp x tensor mesh, its batches sorted into two length groups, killed and
resumed. Length buckets are on: texts of varied lengths, so on some steps the hosts'
own buckets differ and they must agree (per group).
What `launch/tpu_run.sh` does across TPU hosts, here with processes; the same command by hand
is in docs/tpu.md."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gembed import batch as batch_schema, checkpoint, sharding
from gembed.data import mixture
from gembed.formats import modeldir
from gembed.optim import make_optimizer
from gembed.state import (abstract_train_state, init_train_state, initial_params, jit_train_step,
                          model_config_for_run)
from test_train import setup  # noqa: F401  (the tiny checkpoint)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


@pytest.fixture(scope="module")
def varied_data(tmp_path_factory):
  """SNLI/XNLI-like triples of 2 to 8 words (4 to 10 tokens, no prompts): with buckets (8, 16)
  a host's four rows fit 8 tokens on some steps and need 16 on others."""
  data = tmp_path_factory.mktemp("varied")
  rng = np.random.default_rng(1)
  words = "cat dog bird fish tree house car road sun moon star river hill sea".split()

  def text():
    return " ".join(rng.choice(words, rng.integers(2, 9)))

  for name, rows in (("snli-triples.jsonl", 60), ("xnli-triples.jsonl", 40)):
    with open(data / name, "w") as f:
      for _ in range(rows):
        f.write(json.dumps({"query": text(), "positive": text(), "negative": text()}) + "\n")
  return str(data)


def _overrides(model, data, mesh):
  return {"model.init": model, "data.dir": data, "model.projection_dim": 16,
          "loss.mrl_dims": (16, 8), "train.steps": STEPS, "ckpt.every": 2, "mesh.shape": mesh,
          "data.length_buckets": (8, 16), "prompts.query": "", "prompts.document": "",
          "model.dropout_rate": 0.1}


def _config(overrides):
  sys.path.insert(0, ROOT)
  from configs import finetune
  from gembed.recipe import override
  return override(finetune.get_config("tiny"), **overrides)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_hosts(workdir, overrides, log_dir):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = []
  for i in range(2):
    args = [sys.executable, "-m", "gembed.main",
            "--config", os.path.join(ROOT, "configs/finetune.py:tiny"), "--workdir", str(workdir),
            *[f"--config.{k}={v}" for k, v in overrides.items()],
            "--config.train.distributed=True",
            f"--config.train.coordinator_address=127.0.0.1:{port}",
            "--config.train.num_processes=2", f"--config.train.process_id={i}"]
    log = open(os.path.join(log_dir, f"host{i}-{len(os.listdir(log_dir))}.log"), "w")
    procs.append((subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT), log))
  return procs


def _wait(procs, timeout=600):
  deadline = time.time() + timeout
  for proc, log in procs:
    try:
      proc.wait(max(1, deadline - time.time()))
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      log.close()
  return [proc.returncode for proc, _ in procs]


def _logs(log_dir):
  return "\n".join(f"== {name}\n" + open(os.path.join(log_dir, name)).read()[-3000:]
                   for name in sorted(os.listdir(log_dir)))


def _one_process_reference(config):
  """The trainer's own pieces on this process's 8 devices, fed each step with host 0's and
  host 1's batches (each row group's) side by side, padded to the longer's lengths, as one host
  would cut the global batch; also the steps on which the hosts' own buckets differed."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.train.seed))
  init_info, init_params = modeldir.load_model(modeldir.resolve_model_arg(config.model.init))
  model_config = model_config_for_run(init_info.config, config.model)
  params = initial_params(init_info.config, init_params, model_config, init_rng)
  mesh = sharding.make_mesh(config.mesh.shape)
  optimizer, schedule = make_optimizer(config.optim)
  abstract = abstract_train_state(model_config, optimizer, mesh)
  state = init_train_state(params, optimizer, state_rng, abstract)
  step = jit_train_step(config, model_config, optimizer, schedule, abstract, mesh)
  sources = [mixture.from_config(config, init_info.tokenizer_file, i, 2) for i in range(2)]
  specs, hosts = sources[0].specs, [iter(source.dataset) for source in sources]
  task_steps = {spec.name: 0 for spec in specs}
  disagreed = []
  for s in range(config.train.steps):
    batches = [mixture.next_batch(host) for host in hosts]
    tasks = {int(g.pop("task_index")) for b in batches for g in batch_schema.row_groups(b)}
    assert len(tasks) == 1, "the two hosts drew different tasks for one global batch"
    task_steps[specs[tasks.pop()].name] += 1
    lengths = [batch_schema.text_lengths(b) for b in batches]  # (query, document) per group
    if lengths[0] != lengths[1]:
      disagreed.append(s)
    groups = []
    for index, group_lengths in enumerate(np.max(lengths, axis=0)):
      padded = [batch_schema.pad_lengths(batch_schema.row_groups(b)[index], *group_lengths,
                                         sources[0].pad_id) for b in batches]
      groups.append({k: np.concatenate([p[k] for p in padded]) for k in padded[0]})
    batch = batch_schema.from_groups(groups)
    state, _ = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
  return jax.device_get(state.params), task_steps, disagreed


def _flat(params):
  return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])


@pytest.mark.slow
def test_one_host_killed_both_resume(setup, varied_data, tmp_path):  # noqa: F811
  """Two hosts x four devices on a data x fsdp x tensor mesh (2, 2, 2), each host's batches
  sorted into two length groups (data.length_groups; 8 rows a group). Process 1 is SIGKILLed
  after the first checkpoint (process 0, stuck in a collective, is killed too, as a job
  scheduler would); restarted, both resume from that checkpoint, each with its own data
  iterator, and end equal to one host x eight devices. (One run covers every axis: each
  two-process run costs minutes.)"""
  model, _ = setup
  overrides = dict(_overrides(model, varied_data, "2,2,2"), **{
      "data.length_groups": 2, "data.global_batch_size": 16})
  logs = tmp_path / "logs"
  logs.mkdir()
  workdir = tmp_path / "killed"
  procs = _start_hosts(workdir, overrides, str(logs))
  deadline = time.time() + 600
  while time.time() < deadline and not checkpoint.checkpoint_steps(str(workdir)):
    time.sleep(0.05)
  procs[1][0].send_signal(signal.SIGKILL)
  procs[0][0].send_signal(signal.SIGKILL)
  _wait(procs)
  killed_at = checkpoint.checkpoint_steps(str(workdir))
  assert killed_at and killed_at[-1] < STEPS, f"not killed mid-run: {killed_at}"

  assert _wait(_start_hosts(workdir, overrides, str(logs))) == [0, 0], _logs(str(logs))
  full_logs = "".join(open(path).read() for path in logs.iterdir())
  assert f"resumed from step {killed_at[-1]}" in full_logs
  # Sharding by construction across hosts: XLA never falls back to gathering whole activations.
  assert "Involuntary full rematerialization" not in full_logs
  _assert_equals_reference(workdir, overrides)


def _assert_equals_reference(workdir, overrides):
  params, task_steps, disagreed = _one_process_reference(_config(overrides))
  assert disagreed, "the hosts' own length buckets never differed: the agreement went untested"
  np.testing.assert_allclose(_flat(checkpoint.load_workdir_params(str(workdir), STEPS)),
                             _flat(params), atol=1e-5, rtol=0)
  assert json.loads((workdir / "task_steps.json").read_text()) == task_steps
