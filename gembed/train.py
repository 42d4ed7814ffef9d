"""The trainer: the loop of one training stage, `train_and_evaluate(config, workdir)`.

    mesh -> model (init or resume) -> data -> jitted step -> loop (log, checkpoint, dev eval)

The workdir is a self-describing model directory from the first step on (gembed_model.json,
tokenizer.json, checkpoints/), so `gembed encode --model WORKDIR` works at any time. A LoRA run
(model.lora_rank > 0) also writes its adapter alone to WORKDIR/adapter at every checkpoint.

Resume order: a run started again with the same workdir continues from
  1. its own newest checkpoint that reads: parameters, optimizer state, step, RNG, per-task step
     counts and every host's data iterator, so the run ends as if never interrupted (an
     iterator that does not restore, the input pipeline having changed, is said in a warning:
     the model state resumes, the data starts again from its first batch);
  2. else the previous ones, newest first: each unreadable checkpoint (truncated or corrupted
     files) is named in one warning line and moved aside to `checkpoints/<step>.unreadable`,
     never deleted;
  3. else `config.model.init` (a Hugging Face directory or an earlier stage's workdir, parameters
     only) with this run's head, a fresh optimizer and the data from the start.
A checkpoint of a different model (parameter shapes) is an error, not a reason to fall back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from gembed import batch as batch_schema
from gembed import checkpoint, flops, sharding
from gembed.formats import modeldir
from gembed.models import lora
from gembed.optim import make_optimizer
from gembed.models import embedder
from gembed.state import (abstract_params, abstract_train_state, in_step_teacher, init_train_state,
                          initial_params, jit_train_step, loss_dims, model_config_for_run,
                          teacher_config_for_run)
from gembed.writers import MetricWriter

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  pass


def enable_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache: a step shape compiled once (by any run, resume or
  stage with the same shapes) is read back instead of compiled again. "off" disables it;
  "" is the user cache directory. An environment's JAX_COMPILATION_CACHE_DIR wins."""
  if path == "off" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  path = path or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                              "gembed", "xla")
  jax.config.update("jax_compilation_cache_dir", path)
  log.info("compilation cache: %s", path)


def bucket_lengths(buckets, length: int) -> set[int]:
  """The padded lengths a text feature of `length` tokens can take (data.length_buckets)."""
  return {min(b, length) for b in buckets} if buckets else {length}


def join_hosts(train_config) -> None:
  """Joins the multi-host job (`train.distributed`) before JAX touches a device. Cloud TPU VMs
  discover the coordinator and process ids; elsewhere `train.coordinator_address`,
  `train.num_processes` and `train.process_id` name them (CPU hosts talk over gloo)."""
  if not train_config.distributed or jax.distributed.is_initialized():
    return
  if train_config.coordinator_address:
    jax.distributed.initialize(train_config.coordinator_address, train_config.num_processes,
                               train_config.process_id)
  else:
    jax.distributed.initialize()


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) one training stage; returns the last logged metrics and dev results."""
  join_hosts(config.train)
  enable_compilation_cache(config.train.compilation_cache)
  from gembed.data import mixture
  from gembed.data.iterator_handler import (DataIteratorHandler, DataIteratorRestore,
                                            DataIteratorSave)
  workdir = checkpoint.absolute(workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.train.seed))

  # Model: the pretrained init (HF dir or an earlier stage's workdir), this run's head.
  init_info, init_params = modeldir.load_model(modeldir.resolve_model_arg(config.model.init))
  model_config = model_config_for_run(init_info.config, config.model)
  params = initial_params(init_info.config, init_params, model_config, init_rng,
                          tuple(config.model.keep_layers))
  info = _write_model_info(config, workdir, init_info, model_config)

  # Mesh, sharded state and this host's data.
  mesh = sharding.make_mesh(config.mesh.shape)
  optimizer, schedule = make_optimizer(config.optim, frozen_base=bool(model_config.lora_rank))
  abstract = abstract_train_state(model_config, optimizer, mesh)
  state = init_train_state(params, optimizer, state_rng, abstract)
  teacher, teacher_params = _teacher(config, info, model_config, mesh)
  data = mixture.from_config(config, info.tokenizer_file, jax.process_index(), jax.process_count())
  specs, dataset, bad_rows = data.specs, data.dataset, data.bad_rows
  agree_lengths = (mixture.shared_lengths(data.pad_id) if config.data.length_buckets
                   else lambda batch, step: batch)
  if bad_rows and jax.process_index() == 0:  # data.skip_bad_rows: every one, by file and line
    with open(os.path.join(workdir, "bad_rows.txt"), "w", encoding="utf-8") as f:
      f.write("".join(line + "\n" for line in bad_rows))
    log.warning("%d bad rows skipped, all named in %s", len(bad_rows),
                os.path.join(workdir, "bad_rows.txt"))
  iterator = None
  task_steps = np.zeros(len(specs), np.int64)
  step_shapes = set()  # the (query length, document length) of each row group, compiled so far
  max_shapes = (len(bucket_lengths(config.data.length_buckets, config.data.query_length)) * len(
      bucket_lengths(config.data.length_buckets, config.data.document_length))) ** config.data.length_groups
  log.info("at most %d step shapes ((query x document length buckets) ** data.length_groups) "
           "will compile", max_shapes)

  # Resume (the order is in the module docstring).
  manager = checkpoint.make_manager(workdir, config.ckpt.keep, config.ckpt.async_save,
                                    {"data": DataIteratorHandler()})

  def restore_args(with_data: bool):
    nonlocal iterator
    iterator = iter(dataset)  # each attempt restores into a fresh iterator
    return ocp.args.Composite(params=ocp.args.StandardRestore(abstract.params),
                              opt_state=ocp.args.StandardRestore(abstract.opt_state),
                              train=ocp.args.StandardRestore(),
                              **({"data": DataIteratorRestore(iterator)} if with_data else {}))

  start, restored = checkpoint.restore_newest_readable(manager, abstract.params, restore_args)
  if restored is not None:
    meta = restored.train
    state = state.replace(params=restored.params, opt_state=restored.opt_state,
                          step=jnp.asarray(meta["step"], jnp.int32),
                          rng=jax.device_put(jnp.asarray(meta["rng"]), sharding.replicated(mesh)))
    task_steps = np.asarray(meta["task_steps"], np.int64)
    log.info("resumed from step %d of %s", start, workdir)
  else:
    start, iterator = 0, iter(dataset)

  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = jit_train_step(config, model_config, optimizer, schedule, abstract, mesh, teacher)
  teacher_args = (teacher_params,) if teacher else ()

  def save(step: int):
    manager.save(step, force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        train=ocp.args.StandardSave({"step": np.int64(step), "rng": np.asarray(state.rng),
                                     "task_steps": task_steps.copy()}),
        data=DataIteratorSave(iterator)))
    if model_config.lora_rank:  # the adapter alone, beside the checkpoints (docs/adapters.md)
      adapter_dir = os.path.join(workdir, modeldir.ADAPTER_SUBDIR)
      if jax.process_index() == 0:
        modeldir.write_adapter_info(info, adapter_dir, step)
      checkpoint.save_params(os.path.join(adapter_dir, modeldir.PARAMS_SUBDIR),
                             lora.split(state.params)[0])

  d = config.data
  peak = flops.peak_flops_per_device(config.train.peak_flops_per_device) * jax.device_count()
  window_flops = window_tokens = 0.0  # since the last log line, from the actual batch shapes
  writer = MetricWriter(workdir, config, enabled=jax.process_index() == 0)
  dev_evaluate = _dev_evaluator(config, info)
  best = _read_best(workdir)
  total = config.train.steps
  preemption = _Preemption()
  cache_hits = _CacheHits()
  last_metrics, dev_results = {}, None
  bar = _progress_bar(start, total)
  timer_step, timer = start, time.perf_counter()
  try:
    for step in range(start, total):
      host_batch = agree_lengths(mixture.next_batch(iterator), step)
      groups = batch_schema.row_groups(host_batch)  # every row group carries its task's index
      task_steps[int(groups[0]["task_index"])] += 1
      for group in groups:
        del group["task_index"]
      shape = tuple(batch_schema.text_lengths(host_batch))  # (query, document) per row group
      new_shape = shape not in step_shapes
      if new_shape:
        step_shapes.add(shape)
        log.info("step %d: new shape (query, document tokens per row group: %s), %d of at most "
                 "%d: compiling (or reading the compilation cache)", step + 1, shape,
                 len(step_shapes), max_shapes)
        hits_before, compile_start = cache_hits.count, time.perf_counter()
      group_rows = d.global_batch_size // d.length_groups
      for query_len, doc_len in shape:
        window_flops += flops.train_flops_per_step(model_config, group_rows, query_len, doc_len,
                                                   d.num_negatives, teacher[0] if teacher else None)
        window_tokens += group_rows * (query_len + (1 + d.num_negatives) * doc_len)
      batch = jax.tree.map(lambda v: jax.make_array_from_process_local_data(batch_sharding, v),
                           host_batch)
      state, metrics = step_fn(state, batch, *teacher_args)  # compiles a new shape, then dispatches
      if new_shape:
        log.info("step %d: shape %s %s in %.1f s", step + 1, shape,
                 "read from the compilation cache" if cache_hits.count > hits_before
                 else "compiled", time.perf_counter() - compile_start)
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
        # this host's peak resident memory so far (Linux: KiB): a step's host footprint
        metrics["host_memory_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        timer_step, timer = done, time.perf_counter()
        window_flops = window_tokens = 0.0
        last_metrics = metrics
        log.info("step %d: %s", done, ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        writer.scalars(done, {**{f"train/{k}": v for k, v in metrics.items()},
                              **{f"data/steps/{s.name}": int(n) for s, n in zip(specs, task_steps)}})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}")
      if will_save:
        save(done)
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
    cache_hits.close()
    writer.close()
    # An exception's traceback keeps this frame alive; a tf.data iterator still referenced at
    # interpreter shutdown (its tokenizer runs in tf.py_function) can hang the exit.
    iterator = dataset = data = None  # noqa: F841
  return {"metrics": last_metrics, "dev": dev_results, "best": best,
          "task_steps": {s.name: int(n) for s, n in zip(specs, task_steps)}}


def _teacher(config, info: modeldir.ModelInfo, model_config, mesh):
  """(teacher config, its abstract parameters) and its parameters placed on the mesh, or
  (None, None) without a teacher in the step (none, or its embeddings precomputed). The teacher
  embeds the student's token ids, so both must have the same tokenizer."""
  if not in_step_teacher(config):
    _check_precomputed_teacher(config)
    return None, None
  spec = modeldir.resolve_model_arg(config.distill.teacher)
  teacher_info, teacher_params = modeldir.load_model(spec)
  if not _same_file(teacher_info.tokenizer_file, info.tokenizer_file):
    raise ValueError(f"distill.teacher {config.distill.teacher}: its tokenizer "
                     f"({teacher_info.tokenizer_file}) differs from the student's "
                     f"({info.tokenizer_file}); the teacher embeds the student's token ids")
  teacher_config = teacher_config_for_run(teacher_info.config, model_config)
  abstract = abstract_params(teacher_config, mesh)
  placed = jax.device_put(embedder.layer_layout(teacher_params, teacher_config),
                          jax.tree.map(lambda x: x.sharding, abstract))
  log.info("distilling from %s (%d layers, %d-d embeddings)", spec, teacher_config.num_layers,
           teacher_config.embedding_dim)
  return (teacher_config, abstract), placed


def _check_precomputed_teacher(config) -> None:
  """Precomputed embeddings of another teacher than distill.teacher (when named) are refused."""
  directory, teacher = config.distill.teacher_embeddings, config.distill.teacher
  if not directory:
    return
  from gembed.data.teacher_store import read_manifest
  written_by = read_manifest(directory)["teacher"]
  if teacher and checkpoint.absolute(modeldir.resolve_model_arg(teacher)) != checkpoint.absolute(written_by):
    raise ValueError(f"distill.teacher_embeddings {directory} holds {written_by}'s embeddings, "
                     f"not distill.teacher {teacher}'s")
  log.info("distilling from %s's precomputed embeddings (%s)", written_by, directory)


def _same_file(a: str, b: str) -> bool:
  with open(a, "rb") as fa, open(b, "rb") as fb:
    return fa.read() == fb.read()


def _write_model_info(config, workdir: str, init_info: modeldir.ModelInfo,
                      model_config) -> modeldir.ModelInfo:
  """gembed_model.json + tokenizer.json + config.json: the workdir is a model directory."""
  info = modeldir.ModelInfo(
      config=model_config.replace(dropout_rate=0.0), tokenizer_file=init_info.tokenizer_file,
      # Inference length: the initial model's (MiniLM: 256), or the training length if longer;
      # training on short texts does not make long ones unreadable.
      max_length=min(max(init_info.max_length, config.data.query_length, config.data.document_length),
                     model_config.max_position),
      normalize=True, query_prompt=config.prompts.query, document_format=config.prompts.document,
      mrl_dims=loss_dims(config, model_config), default_task=config.prompts.default_task,
      source=config.model.init)
  if jax.process_index() == 0:
    modeldir.write_model_info(info, workdir)
    (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  checkpoint.sync_hosts("gembed_model.json written")
  return modeldir.read_model_info(workdir)


def _dev_evaluator(config, info: modeldir.ModelInfo):
  """evaluate(params) -> results dict, or None when no dev set is configured."""
  e = config.eval
  if not e.data_dir:
    return None
  from gembed.encode import TextEncoder
  from gembed.evaluation import suite

  sets = suite.select(suite.discover(e.data_dir, split="dev"), list(e.tasks))
  if not sets:
    raise ValueError(f"eval.data_dir {e.data_dir}: no evaluation sets found")

  def evaluate(params):
    encoder = TextEncoder(info, params, batch_size=e.batch_size)
    return suite.evaluate(suite.ModelEmbedder(encoder), sets, info.dims, e.max_examples)

  return evaluate


class _CacheHits:
  """Counts JAX's persistent compilation cache hits (its monitoring events), so a new step shape
  is logged as read from the cache or compiled."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_listener(self._on_event)

  def _on_event(self, event: str, **unused):
    if event == "/jax/compilation_cache/cache_hits":
      self.count += 1

  def close(self):
    jax.monitoring.unregister_event_listener(self._on_event)


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


def _read_best(workdir):
  path = epath.Path(workdir) / modeldir.BEST_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _track_best(workdir, writer: MetricWriter, step, results, metric, best, params):
  """Logs dev scores; on a new best, saves its parameters apart from the resume checkpoints."""
  from gembed.evaluation.suite import main_score
  full_dim = results["dims"][0]
  score = main_score(results, metric, full_dim)
  values = {f"eval/{name}/{task['main_metric']}@{dim}": value
            for name, task in results["tasks"].items() for dim, value in task["main_score"].items()}
  values.update({f"eval/task_mean@{dim}": value for dim, value in results["task_mean"].items()})
  writer.scalars(step, values)
  if best is None or score > best["score"]:
    log.info("dev %s at step %d: %.2f, the best so far (saved)", metric, step, score)
    checkpoint.save_params(os.path.join(workdir, modeldir.BEST_SUBDIR), params)
    best = {"step": step, "score": score, "metric": metric, "dim": full_dim}
    _write_json(os.path.join(workdir, modeldir.BEST_FILE), best)
  else:
    log.info("dev %s at step %d: %.2f (best: %.2f at step %d)", metric, step, score,
             best["score"], best["step"])
  return best


def _progress_bar(start, total):
  from tqdm import tqdm
  return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
              disable=jax.process_index() != 0)
