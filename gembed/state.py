"""The train state of a config: the run's model config, its initial parameters (pretrained
encoder + head), sharded optimizer state, and the jitted, sharded, donating train step.

The trainer, the AOT check (gembed.tools.aot) and the benchmarks build their state and step
here, so they compile the same program.
"""

from __future__ import annotations

import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gembed import batch as batch_schema
from gembed import chunks, sharding
from gembed.models import embedder, lora
from gembed.models.config import ModelConfig
from gembed.steps import LossConfig, TrainState, train_step

log = logging.getLogger(__name__)


def model_config_for_run(init: ModelConfig, cfg) -> ModelConfig:
  """The init checkpoint's architecture with this run's head and compute settings, and only the
  layers `cfg.keep_layers` names (a student made from its teacher's own layers)."""
  projection_dim = cfg.projection_dim or init.projection_dim
  keep = tuple(cfg.keep_layers)
  if keep and (sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= init.num_layers):
    raise ValueError(f"model.keep_layers {keep}: increasing layer indices below the init's "
                     f"{init.num_layers} layers")
  return init.replace(projection_dim=projection_dim, projection_bias=cfg.projection_bias,
                      projection_init=cfg.projection_init, num_layers=len(keep) or init.num_layers,
                      dropout_rate=cfg.dropout_rate, compute_dtype=cfg.compute_dtype,
                      remat=cfg.remat, remat_policy=cfg.remat_policy, scan_layers=cfg.scan_layers,
                      lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                      lora_targets=tuple(cfg.lora_targets))


def teacher_config_for_run(teacher: ModelConfig, student: ModelConfig) -> ModelConfig:
  """A distillation teacher as the student runs: same compute dtype and layer layout; it only
  embeds (no dropout, no rematerialisation)."""
  return teacher.replace(compute_dtype=student.compute_dtype, scan_layers=student.scan_layers,
                         dropout_rate=0.0, remat=False)


def loss_dims(config, model_config: ModelConfig) -> tuple[int, ...]:
  """The MRL dims a run trains (and its model directory records): the config's, else the full
  width."""
  return tuple(config.loss.mrl_dims) or (model_config.embedding_dim,)


def initial_params(init_config: ModelConfig, init_params: dict, config: ModelConfig, rng,
                   keep_layers=()) -> dict:
  """Pretrained encoder (in this run's layer layout; an init's adapters merged into it; only
  `keep_layers` of it when given); a new randomly initialised projection head unless the init
  has one; new adapters (B = 0) when this run has them."""
  init_params, init_config = lora.merge(init_params, init_config)
  params = dict(init_params)
  if keep_layers:
    params = embedder.keep_layers(params, init_config, keep_layers)
  params = embedder.layer_layout(params, config)
  keep_head = (init_config.projection_dim == config.projection_dim
               and init_config.projection_bias == config.projection_bias)
  fresh = None
  if (config.projection_dim and not keep_head) or config.lora_rank:
    fresh = jax.tree_util.tree_map(np.asarray, embedder.init_params(config, rng))
  if config.projection_dim and not keep_head:
    params["projection"] = fresh["projection"]
    log.info("new projection head %d -> %d", config.hidden_size, config.projection_dim)
  elif not config.projection_dim:
    params.pop("projection", None)
  if config.lora_rank:
    adapters, _ = lora.split({"encoder": fresh["encoder"]})  # the encoder's factors, not the head
    params = lora.combine(params, adapters)
    log.info("new rank-%d adapters on %s", config.lora_rank, ", ".join(config.lora_targets))
  return params


def optimizer_state_sharding(optimizer, abstract_params, param_sharding, mesh):
  """Optimizer moments take their parameter's sharding; counts and scalars are replicated. A
  frozen parameter (adapter runs) has no moments: its place holds a MaskedNode."""
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  return optax.tree_map_params(
      optimizer, lambda x, s: x if masked(x) else s, jax.eval_shape(optimizer.init, abstract_params),
      param_sharding, transform_non_params=lambda _: sharding.replicated(mesh), is_leaf=masked)


def abstract_train_state(model_config: ModelConfig, optimizer, mesh) -> TrainState:
  """The train state as ShapeDtypeStructs carrying their shardings: the one path the trainer,
  the AOT check and the benchmarks take (jax.eval_shape of the initialisers -> the models'
  logical partition specs -> mesh shardings by sharding.py's rules). Nothing is allocated."""
  abstract = abstract_params(model_config, mesh)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
  param_sharding = jax.tree.map(lambda x: x.sharding, abstract)
  replicated = sharding.replicated(mesh)
  shardings = TrainState(
      step=replicated, params=param_sharding,
      opt_state=optimizer_state_sharding(optimizer, params, param_sharding, mesh), rng=replicated)
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                      opt_state=jax.eval_shape(optimizer.init, params),
                      rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def abstract_params(model_config: ModelConfig, mesh):
  """A model's parameters as ShapeDtypeStructs carrying their mesh shardings (the train state's,
  and a distillation teacher's)."""
  params = jax.eval_shape(lambda: embedder.init_params(model_config, jax.random.PRNGKey(0)))
  shardings = sharding.param_shardings(embedder.logical_axes(model_config), params, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      params, shardings)


def shardings_of(abstract: TrainState) -> TrainState:
  return jax.tree.map(lambda x: x.sharding, abstract)


def init_train_state(params, optimizer, rng, abstract: TrainState) -> TrainState:
  """Host parameters and an RNG placed on the abstract state's shardings; the optimizer state
  initialised on the devices by a jit with those shardings as out_shardings."""
  shardings = shardings_of(abstract)
  params = jax.device_put(params, shardings.params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=params,
                    opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params),
                    rng=jax.device_put(rng, shardings.rng))


def loss_config_of(config, model_config: ModelConfig) -> LossConfig:
  """The step's LossConfig from a run config's `loss` and `distill` sections."""
  distill = config.distill
  weights = (distill.embedding_weight, distill.similarity_weight)
  if bool(distill.teacher or distill.teacher_embeddings) != any(weights):
    raise ValueError("distillation needs both a teacher (distill.teacher or "
                     "distill.teacher_embeddings) and a distill.embedding_weight or "
                     f"distill.similarity_weight > 0 (teacher={distill.teacher!r}, "
                     f"teacher_embeddings={distill.teacher_embeddings!r}, weights={weights})")
  return LossConfig(temperature=config.loss.temperature, dims=loss_dims(config, model_config),
                    weights=tuple(config.loss.mrl_weights), decoupled=config.loss.decoupled,
                    ring=config.loss.ring, prefix_distill=config.loss.prefix_distill,
                    contrastive_weight=config.loss.contrastive_weight,
                    distill_embedding=distill.embedding_weight,
                    distill_embedding_kind=distill.embedding_loss,
                    distill_similarity=distill.similarity_weight)


def in_step_teacher(config) -> bool:
  """Whether the teacher model runs inside the step (else its embeddings come with the batch,
  or there is no teacher)."""
  return bool(config.distill.teacher) and not config.distill.teacher_embeddings


def grad_cache_chunking(config, row_devices: int) -> Callable[[dict], int]:
  """`rows(batch)`: the GradCache chunk for a batch (0: no GradCache), fixed
  (train.grad_cache_chunk) or, with train.grad_cache_tokens, the most rows whose tokens (query,
  positive and hard negatives at the batch's lengths) fit that budget: each length bucket gets
  its own chunk, short batches fewer and larger chunks, long ones smaller, memory bounded alike.
  With data.length_groups, chunks split each row group (the longest group sets the budget's)."""
  t, batch_rows = config.train, config.data.global_batch_size // config.data.length_groups
  if not t.grad_cache:
    return lambda batch: 0
  if t.grad_cache_tokens:
    def rows(batch):
      negatives = config.data.num_negatives
      tokens = max(q + d * (1 + negatives) for q, d in batch_schema.text_lengths(batch))
      chosen = chunks.rows_within_tokens(batch_rows, tokens, t.grad_cache_tokens, row_devices)
      log.info("GradCache: %d rows per chunk at %d tokens per row (train.grad_cache_tokens %d)",
               chosen, tokens, t.grad_cache_tokens)
      return chosen
    return rows
  if batch_rows % t.grad_cache_chunk:
    raise ValueError(f"train.grad_cache_chunk {t.grad_cache_chunk} must divide the {batch_rows} "
                     "rows of a step's row group (data.global_batch_size / data.length_groups)")
  if t.grad_cache_chunk % row_devices:
    raise ValueError(f"train.grad_cache_chunk {t.grad_cache_chunk} must be a multiple "
                     f"of the {row_devices} devices the batch is split over (mesh data x fsdp): "
                     "each chunk's rows stay sharded like the batch")
  return lambda batch: t.grad_cache_chunk


def jit_train_step(config, model_config: ModelConfig, optimizer, schedule, abstract: TrainState,
                   mesh, teacher: tuple[ModelConfig, dict] | None = None):
  """The jitted, sharded, donating train step of a config (trainer, AOT check and benchmarks
  alike), traced under the mesh and the logical-axis rules (sharding.step_context).

  With `teacher` = (its config, its `abstract_params`), the step is `step(state, batch,
  teacher_params)`, the teacher's parameters sharded by the same rules and not donated. With
  precomputed teacher embeddings the batch carries them (sharded like its rows)."""
  row_devices = mesh.shape["data"] * mesh.shape["fsdp"]  # the batch's mesh axes
  groups = config.data.length_groups
  if groups > 1 and (config.data.global_batch_size // groups) % row_devices:
    raise ValueError(f"data.length_groups {groups}: each group's data.global_batch_size / "
                     f"{groups} rows must split over the {row_devices} devices the batch is "
                     "sharded over (mesh data x fsdp)")
  grad_cache_rows = grad_cache_chunking(config, row_devices)
  loss_config = loss_config_of(config, model_config)
  if bool(teacher) != in_step_teacher(config):
    raise ValueError("the train step has a teacher model exactly when the config distills from "
                     "distill.teacher without precomputed distill.teacher_embeddings")
  in_shardings = (shardings_of(abstract), sharding.batch_sharding(mesh))
  if teacher:
    in_shardings += (jax.tree.map(lambda x: x.sharding, teacher[1]),)
  def step(state, batch, *teacher_params):  # traced once per batch shape
    return train_step(state, batch, *teacher_params, model_config=model_config,
                      loss_config=loss_config, optimizer=optimizer, schedule=schedule,
                      grad_cache_chunk=grad_cache_rows(batch),
                      teacher_config=teacher[0] if teacher else None)

  return sharding.StepUnderRules(jax.jit(
      step, in_shardings=in_shardings,
      out_shardings=(shardings_of(abstract), sharding.replicated(mesh)),
      donate_argnums=(0,)), mesh)
