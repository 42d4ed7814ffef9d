"""The train state of a config: the run's model config, its initial parameters (pretrained
encoder + head), sharded optimizer state, and the jitted, sharded, donating train step.

The trainer, the AOT check (gembed.tools.aot) and the benchmarks build their state and step
here, so they compile the same program.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gembed import sharding
from gembed.models import embedder, lora
from gembed.models.config import ModelConfig
from gembed.steps import LossConfig, TrainState, train_step

log = logging.getLogger(__name__)


def model_config_for_run(init: ModelConfig, cfg) -> ModelConfig:
  """The init checkpoint's architecture with this run's head and compute settings."""
  projection_dim = cfg.projection_dim or init.projection_dim
  return init.replace(projection_dim=projection_dim, projection_bias=cfg.projection_bias,
                      projection_init=cfg.projection_init,
                      dropout_rate=cfg.dropout_rate, compute_dtype=cfg.compute_dtype,
                      remat=cfg.remat, remat_policy=cfg.remat_policy, scan_layers=cfg.scan_layers,
                      lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                      lora_targets=tuple(cfg.lora_targets))


def loss_dims(config, model_config: ModelConfig) -> tuple[int, ...]:
  """The MRL dims a run trains (and its model directory records): the config's, else the full
  width."""
  return tuple(config.loss.mrl_dims) or (model_config.embedding_dim,)


def initial_params(init_config: ModelConfig, init_params: dict, config: ModelConfig, rng) -> dict:
  """Pretrained encoder (in this run's layer layout; an init's adapters merged into it); a new
  randomly initialised projection head unless the init has one; new adapters (B = 0) when this
  run has them."""
  init_params, init_config = lora.merge(init_params, init_config)
  params = embedder.layer_layout(dict(init_params), config)
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
  params = jax.eval_shape(lambda: embedder.init_params(model_config, jax.random.PRNGKey(0)))
  param_sharding = sharding.param_shardings(embedder.logical_axes(model_config), params, mesh)
  replicated = sharding.replicated(mesh)
  shardings = TrainState(
      step=replicated, params=param_sharding,
      opt_state=optimizer_state_sharding(optimizer, params, param_sharding, mesh), rng=replicated)
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                      opt_state=jax.eval_shape(optimizer.init, params),
                      rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


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


def jit_train_step(config, model_config: ModelConfig, optimizer, schedule, abstract: TrainState,
                   mesh):
  """The jitted, sharded, donating train step of a config (trainer, AOT check and benchmarks
  alike), traced under the mesh and the logical-axis rules (sharding.step_context)."""
  if config.train.grad_cache and config.data.global_batch_size % config.train.grad_cache_chunk:
    raise ValueError(f"train.grad_cache_chunk {config.train.grad_cache_chunk} must divide "
                     f"data.global_batch_size {config.data.global_batch_size}")
  row_devices = mesh.shape["data"] * mesh.shape["fsdp"]  # the batch's mesh axes
  if config.train.grad_cache and config.train.grad_cache_chunk % row_devices:
    raise ValueError(f"train.grad_cache_chunk {config.train.grad_cache_chunk} must be a multiple "
                     f"of the {row_devices} devices the batch is split over (mesh data x fsdp): "
                     "each chunk's rows stay sharded like the batch")
  loss_config = LossConfig(temperature=config.loss.temperature,
                           dims=loss_dims(config, model_config),
                           weights=tuple(config.loss.mrl_weights),
                           decoupled=config.loss.decoupled, ring=config.loss.ring,
                           prefix_distill=config.loss.prefix_distill)
  return sharding.StepUnderRules(jax.jit(
      functools.partial(train_step, model_config=model_config, loss_config=loss_config,
                        optimizer=optimizer, schedule=schedule,
                        grad_cache_chunk=config.train.grad_cache_chunk if config.train.grad_cache else 0),
      in_shardings=(shardings_of(abstract), sharding.batch_sharding(mesh)),
      out_shardings=(shardings_of(abstract), sharding.replicated(mesh)),
      donate_argnums=(0,)), mesh)
