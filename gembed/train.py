"""The trainer: mesh -> model -> data -> state -> restore -> jitted step -> loop.

One readable function, `train_and_evaluate(config, workdir)`. The workdir is a self-describing
model directory from the first step on (gembed_model.json, tokenizer.json, checkpoints/), so
`gembed encode --model WORKDIR` works at any time, and a run started again with the same
workdir resumes exactly (parameters, optimizer, RNG and every host's data iterator).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath

from gembed import checkpoint, flops, modeldir, sharding
from gembed.models import embedder
from gembed.models.config import ModelConfig
from gembed.optim import make_optimizer
from gembed.steps import LossConfig, TrainState, train_step

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  pass


def model_config_for_run(init: ModelConfig, cfg) -> ModelConfig:
  """The init checkpoint's architecture with this run's head and compute settings."""
  projection_dim = cfg.projection_dim or init.projection_dim
  return init.replace(projection_dim=projection_dim, projection_bias=cfg.projection_bias,
                      projection_init=cfg.projection_init,
                      dropout_rate=cfg.dropout_rate, compute_dtype=cfg.compute_dtype,
                      remat=cfg.remat, remat_policy=cfg.remat_policy, scan_layers=cfg.scan_layers)


def initial_params(init_config: ModelConfig, init_params: dict, config: ModelConfig, rng) -> dict:
  """Pretrained encoder (in this run's layer layout); a new randomly initialised projection head
  unless the init has one."""
  params = embedder.layer_layout(dict(init_params), config)
  keep_head = (init_config.projection_dim == config.projection_dim
               and init_config.projection_bias == config.projection_bias)
  if config.projection_dim and not keep_head:
    fresh = embedder.init_params(config, rng)
    params["projection"] = jax.tree_util.tree_map(np.asarray, fresh["projection"])
    log.info("new projection head %d -> %d", config.hidden_size, config.projection_dim)
  elif not config.projection_dim:
    params.pop("projection", None)
  return params


def optimizer_state_sharding(optimizer, abstract_params, param_sharding, mesh):
  """Optimizer moments take their parameter's sharding; counts and scalars are replicated."""
  return optax.tree_map_params(
      optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, abstract_params), param_sharding,
      transform_non_params=lambda _: sharding.replicated(mesh))


def init_train_state(params, optimizer, rng, mesh) -> TrainState:
  """State for sharded params; step and RNG replicated."""
  replicated = sharding.replicated(mesh)
  param_sharding = jax.tree_util.tree_map(lambda x: x.sharding, params)
  opt_sharding = optimizer_state_sharding(optimizer, params, param_sharding, mesh)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                    opt_state=jax.jit(optimizer.init, out_shardings=opt_sharding)(params),
                    rng=jax.device_put(rng, replicated))


def jit_train_step(config, model_config: ModelConfig, optimizer, schedule, state_sharding, mesh):
  """The jitted, sharded, donating train step of a config (trainer and AOT check alike)."""
  if config.train.grad_cache and config.data.global_batch_size % config.train.grad_cache_chunk:
    raise ValueError(f"train.grad_cache_chunk {config.train.grad_cache_chunk} must divide "
                     f"data.global_batch_size {config.data.global_batch_size}")
  loss_config = LossConfig(temperature=config.loss.temperature,
                           dims=tuple(config.loss.mrl_dims) or (model_config.embedding_dim,),
                           weights=tuple(config.loss.mrl_weights),
                           decoupled=config.loss.decoupled, ring=config.loss.ring)
  return jax.jit(
      functools.partial(train_step, model_config=model_config, loss_config=loss_config,
                        optimizer=optimizer, schedule=schedule,
                        grad_cache_chunk=config.train.grad_cache_chunk if config.train.grad_cache else 0),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=(0,))


def maybe_initialize_distributed(enabled: bool) -> None:
  if enabled and jax.process_count() == 1:
    jax.distributed.initialize()  # Cloud TPU VMs: coordinator and process ids are discovered


def build_data(config, info: modeldir.ModelInfo, seed: int):
  """SeqIO tasks + the one-task-per-step mixture iterator for this host."""
  from gembed.data import pipeline

  d = config.data
  if not d.tasks:
    raise ValueError("config.data.tasks is empty: name at least one training dataset")
  specs = [pipeline.TaskSpec(name=t.name, files=tuple(os.path.join(d.dir, f) for f in t.files),
                             prompt_task=t.prompt_task, rate=t.rate or None, source=t.source,
                             tfds_name=t.tfds_name, tfds_data_dir=t.tfds_data_dir, split=t.split,
                             seed=seed)
           for t in d.tasks]
  tasks = [pipeline.register_task(
      s, tokenizer_file=info.tokenizer_file, query_length=d.query_length,
      document_length=d.document_length, num_negatives=d.num_negatives,
      query_prompt=config.prompts.query, document_format=config.prompts.document,
      skip_bad_rows=d.skip_bad_rows, task_dropout=config.prompts.task_dropout) for s in specs]
  rates = pipeline.mixture_rates(tasks, specs, d.mixing, d.mixing_temperature)
  if d.length_buckets and jax.process_count() > 1:
    raise ValueError("data.length_buckets cuts each host's batch on its own; with several hosts "
                     "use static lengths (data.length_buckets = ())")
  if d.global_batch_size % jax.process_count():
    raise ValueError(f"data.global_batch_size {d.global_batch_size} is not divisible by "
                     f"{jax.process_count()} hosts")
  dataset = pipeline.make_mixture(
      tasks, rates, host_batch_size=d.global_batch_size // jax.process_count(), seed=seed,
      shard_index=jax.process_index(), num_shards=jax.process_count(),
      shuffle_buffer=d.shuffle_buffer, query_length=d.query_length,
      document_length=d.document_length, num_negatives=d.num_negatives,
      pad_id=tasks[0].output_features["query"].vocabulary.pad_id,
      length_buckets=tuple(d.length_buckets))
  log.info("mixture: %s", ", ".join(f"{s.name}={r:.3f} ({t.num_rows} rows)"
                                     for s, r, t in zip(specs, rates, tasks)))
  return specs, rates, dataset


def make_dev_evaluator(config, info: modeldir.ModelInfo):
  """Returns evaluate(params) -> results dict, or None when no dev set is configured."""
  e = config.eval
  if not e.data_dir:
    return None
  from gembed.encode import TextEncoder
  from gembed.evaluation import suite

  sets = suite.select(suite.discover(e.data_dir, split="dev"), list(e.tasks))
  if not sets:
    raise ValueError(f"eval.data_dir {e.data_dir}: no evaluation sets found")
  dims = sorted(set(info.mrl_dims) | {info.config.embedding_dim}, reverse=True)

  def evaluate(params):
    encoder = TextEncoder(info, params, batch_size=e.batch_size)
    return suite.evaluate(suite.ModelEmbedder(encoder), sets, dims, e.max_examples)

  return evaluate


class _Preemption:
  """SIGTERM (TPU preemption) asks the loop to checkpoint and stop at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    log.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _check_finite(metrics: dict, step: int, workdir: str) -> None:
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    steps = checkpoint.checkpoint_steps(workdir)
    raise NonFiniteLossError(
        f"non-finite loss ({loss}) at step {step}; stopped without saving. Last good checkpoint: "
        f"{steps[-1] if steps else 'none'}. Lower optim.learning_rate or raise loss.temperature.")


def _write_json(path: str, value) -> None:
  if jax.process_index() == 0:
    epath.Path(path).write_text(json.dumps(value, indent=2))


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) one training stage; returns the last logged metrics and dev results."""
  maybe_initialize_distributed(config.train.distributed)
  from gembed.modeldir import resolve_model_arg
  from gembed.data.iterator_handler import (DataIteratorHandler, DataIteratorRestore,
                                            DataIteratorSave)
  workdir = checkpoint.absolute(workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  rng = jax.random.PRNGKey(config.train.seed)
  init_rng, state_rng = jax.random.split(rng)

  # Model: the pretrained init (HF dir or an earlier stage's workdir), this run's head.
  init_info, init_params = modeldir.load_model(resolve_model_arg(config.model.init))
  model_config = model_config_for_run(init_info.config, config.model)
  params = initial_params(init_info.config, init_params, model_config, init_rng)
  dims = tuple(config.loss.mrl_dims) or (model_config.embedding_dim,)
  info = modeldir.ModelInfo(
      config=model_config.replace(dropout_rate=0.0), tokenizer_file=init_info.tokenizer_file,
      # Inference length: the initial model's (MiniLM: 256), or the training length if longer;
      # training on short texts does not make long ones unreadable.
      max_length=min(max(init_info.max_length, config.data.query_length, config.data.document_length),
                     model_config.max_position),
      normalize=True, query_prompt=config.prompts.query, document_format=config.prompts.document,
      mrl_dims=dims, default_task=config.prompts.default_task, source=config.model.init)
  if jax.process_index() == 0:
    modeldir.write_model_info(info, workdir)
    (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  info = modeldir.read_model_info(workdir)

  # Mesh and sharded state.
  mesh = sharding.make_mesh(config.mesh.shape)
  param_sharding = sharding.param_shardings(embedder.logical_axes(model_config), params, mesh)
  params = jax.device_put(params, param_sharding)
  optimizer, schedule = make_optimizer(config.optim)
  state = init_train_state(params, optimizer, state_rng, mesh)
  state_sharding = jax.tree_util.tree_map(lambda x: x.sharding, state)

  specs, rates, dataset = build_data(config, info, config.train.seed)
  iterator = iter(dataset)
  task_steps = np.zeros(len(specs), np.int64)

  manager = checkpoint.make_manager(workdir, config.ckpt.keep,
                                    config.ckpt.async_save, {"data": DataIteratorHandler()})
  start = manager.latest_step()
  if start is not None:
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(start, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract.params),
        opt_state=ocp.args.StandardRestore(abstract.opt_state),
        train=ocp.args.StandardRestore(),
        data=DataIteratorRestore(iterator)))
    meta = restored.train
    state = state.replace(params=restored.params, opt_state=restored.opt_state,
                          step=jnp.asarray(meta["step"], jnp.int32),
                          rng=jax.device_put(jnp.asarray(meta["rng"]), sharding.replicated(mesh)))
    task_steps = np.asarray(meta["task_steps"], np.int64)
    log.info("resumed from step %d of %s", start, workdir)
  start = start or 0

  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = jit_train_step(config, model_config, optimizer, schedule, state_sharding, mesh)

  def save(step: int, force: bool = False):
    manager.save(step, force=force, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        train=ocp.args.StandardSave({"step": np.int64(step), "rng": np.asarray(state.rng),
                                     "task_steps": task_steps.copy()}),
        data=DataIteratorSave(iterator)))

  d = config.data
  peak = flops.peak_flops_per_device(config.train.peak_flops_per_device) * jax.device_count()
  window_flops = window_tokens = 0.0  # since the last log line, from the actual batch shapes
  writer = _summary_writer(workdir)
  dev_evaluate = make_dev_evaluator(config, info)
  best = _read_best(workdir)
  total = config.train.steps
  preemption = _Preemption()
  last_metrics, dev_results = {}, None
  bar = _progress_bar(start, total)
  timer_step, timer = start, time.perf_counter()
  try:
    for step in range(start, total):
      host_batch = {k: v.numpy() for k, v in next(iterator).items()}
      task_steps[int(host_batch.pop("task_index"))] += 1
      query_len, doc_len = host_batch["query_ids"].shape[1], host_batch["positive_ids"].shape[1]
      window_flops += flops.train_flops_per_step(model_config, d.global_batch_size, query_len,
                                                 doc_len, d.num_negatives)
      window_tokens += d.global_batch_size * (query_len + (1 + d.num_negatives) * doc_len)
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in host_batch.items()}
      with jax.set_mesh(mesh):  # the ring loss's shard_map reads the mesh from here
        state, metrics = step_fn(state, batch)
      done = step + 1
      bar.update(1)
      will_save = done % config.ckpt.every == 0 or done == total or preemption.requested
      if done % config.train.log_every == 0 or will_save:
        metrics = jax.device_get(metrics)
        _check_finite(metrics, done, workdir)
        elapsed = time.perf_counter() - timer
        steps_run = done - timer_step
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["examples_per_second"] = steps_run * d.global_batch_size / elapsed
        metrics["tokens_per_second_per_device"] = window_tokens / elapsed / jax.device_count()
        if peak:
          metrics["mfu"] = window_flops / elapsed / peak
        timer_step, timer = done, time.perf_counter()
        window_flops = window_tokens = 0.0
        last_metrics = metrics
        _log_metrics(writer, done, metrics, specs, task_steps)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}")
      if will_save:
        save(done, force=True)
        _write_json(os.path.join(workdir, "task_steps.json"),
                    {s.name: int(n) for s, n in zip(specs, task_steps)})
      if dev_evaluate and ((config.eval.every and done % config.eval.every == 0) or done == total):
        dev_results = dev_evaluate(state.params)
        best = _track_best(workdir, writer, done, dev_results, config.eval.metric, best, state.params)
        timer_step, timer = done, time.perf_counter()  # evaluation time is not training time
        window_flops = window_tokens = 0.0
      if preemption.requested:
        break
  finally:
    bar.close()
    manager.wait_until_finished()
    manager.close()
    preemption.restore()
    if writer:
      writer.close()
    # An exception's traceback keeps this frame alive; a tf.data iterator still referenced at
    # interpreter shutdown (its tokenizer runs in tf.py_function) can hang the exit.
    iterator = dataset = None  # noqa: F841
  return {"metrics": last_metrics, "dev": dev_results, "best": best,
          "task_steps": {s.name: int(n) for s, n in zip(specs, task_steps)}}


def _summary_writer(workdir):
  if jax.process_index() != 0:
    return None
  from tensorboardX import SummaryWriter
  return SummaryWriter(os.path.join(workdir, "tensorboard"))


def _log_metrics(writer, step, metrics, specs, task_steps):
  log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
  if writer:
    for k, v in metrics.items():
      writer.add_scalar(f"train/{k}".replace("@", "_at_"), v, step)
    for s, n in zip(specs, task_steps):
      writer.add_scalar(f"data/steps/{s.name}", int(n), step)
    writer.flush()


def _read_best(workdir):
  path = epath.Path(workdir) / modeldir.BEST_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _track_best(workdir, writer, step, results, metric, best, params):
  """Logs dev scores; on a new best, saves its parameters apart from the resume checkpoints."""
  from gembed.evaluation.suite import main_score
  full_dim = results["dims"][0]
  score = main_score(results, metric, full_dim)
  if writer:
    for name, task in results["tasks"].items():
      for dim, value in task["main_score"].items():
        writer.add_scalar(f"eval/{name}/{task['main_metric']}_at_{dim}", value, step)
    for dim, value in results["task_mean"].items():
      writer.add_scalar(f"eval/task_mean_at_{dim}", value, step)
    writer.flush()
  log.info("dev %s at step %d: %.2f (best so far: %s)", metric, step, score,
           f"{best['score']:.2f} at step {best['step']}" if best else "none")
  if best is None or score > best["score"]:
    checkpoint.save_params(os.path.join(workdir, modeldir.BEST_SUBDIR), params)
    best = {"step": step, "score": score, "metric": metric, "dim": full_dim}
    _write_json(os.path.join(workdir, modeldir.BEST_FILE), best)
  return best


def _progress_bar(start, total):
  from tqdm import tqdm
  return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
              disable=jax.process_index() != 0)
