"""Ahead-of-time compilation of a config's train step: per-device memory before any run.

The TPU path (`--topology`) needs libtpu (the `tpu` extra); the same code is tested here on the
simulated 8-device CPU mesh, and on a real TPU topology only where libtpu is installed.
"""

import os
import subprocess
import sys

import jax
import pytest

from gembed.tools import aot
from tiny import make_tiny_bert_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory, minilm_dir):
  return make_tiny_bert_dir(str(tmp_path_factory.mktemp("tiny")),
                            os.path.join(minilm_dir, "tokenizer.json"))


def _config(init, batch, grad_cache=False, mesh="data", negatives=1, scan_layers=False):
  sys.path.insert(0, ROOT)
  from configs import common
  c = common.get_base_config()
  c.model.init = init
  c.model.projection_dim = 32
  c.loss.mrl_dims = (32, 16)
  c.data.global_batch_size = batch
  c.data.query_length = c.data.document_length = 32
  c.data.num_negatives = negatives
  c.train.grad_cache = grad_cache
  c.train.grad_cache_chunk = 16
  c.mesh.shape = mesh
  c.model.scan_layers = scan_layers
  return c


def _temp(init, batch, grad_cache):
  compiled, _ = aot.compile_train_step(_config(init, batch, grad_cache), jax.devices()[:1])
  return aot.memory_report(compiled)["temp"]


def test_grad_cache_memory_is_flat_in_batch_size_and_plain_is_not(tiny_init):
  plain = [_temp(tiny_init, b, False) for b in (64, 1024)]
  cached = [_temp(tiny_init, b, True) for b in (64, 1024)]
  assert cached[1] <= 1.5 * cached[0], cached
  assert plain[1] >= 8 * plain[0], plain
  assert cached[1] * 8 < plain[1]


def test_grad_cache_token_budget_bounds_memory_at_every_length(tiny_init, caplog):
  """train.grad_cache_tokens: each document length gets the chunk that fits the budget, so the
  step's temporary memory grows little with the length where a fixed chunk's grows with its
  square (attention): measured 10.8 -> 30.4 MB against 10.8 -> 228 MB, documents 32 -> 256."""
  def temp(document_length, tokens):
    config = _config(tiny_init, 64, grad_cache=True)
    config.data.document_length, config.train.grad_cache_tokens = document_length, tokens
    compiled, _ = aot.compile_train_step(config, jax.devices()[:1])
    return aot.memory_report(compiled)["temp"]

  budget = 16 * (32 + 2 * 32)  # the fixed chunk's 16 rows at document length 32
  fixed = [temp(n, 0) for n in (32, 256)]
  with caplog.at_level("INFO", logger="gembed.state"):
    fitted = [temp(n, budget) for n in (32, 256)]
  chosen = [r.getMessage() for r in caplog.records if "rows per chunk" in r.getMessage()]
  assert chosen[0].startswith("GradCache: 16 rows per chunk at 96 tokens")
  assert chosen[-1].startswith("GradCache: 2 rows per chunk at 544 tokens")  # 544 x 2 <= 1536
  assert fitted[0] == fixed[0]
  assert fixed[1] >= 10 * fixed[0] and fitted[1] <= 4 * fitted[0], (fixed, fitted)
  assert fitted[1] * 5 <= fixed[1]


def test_aot_on_the_simulated_mesh_reports_memory_and_sharding_errors(tiny_init):
  compiled, model_config = aot.compile_train_step(_config(tiny_init, 64, mesh="data_fsdp",
                                                          scan_layers=True))
  report = aot.memory_report(compiled)
  assert report["argument"] > 0 and report["temp"] > 0
  assert report["peak_estimate"] == report["argument"] + report["output"] - report["alias"] + report["temp"]
  config = _config(tiny_init, 64, mesh="data_fsdp", scan_layers=True)
  config.train.peak_flops_per_device = 1e12
  costs = aot.flops_report(compiled, model_config, config, jax.devices(), mfu=0.5)
  # Same order, not equal: XLA counts everything the program runs (softmax, the loss, the
  # optimizer; measured 1.48x the matmul count unrolled) but a scanned layer stack's loop body
  # once (0.84x here, 2 layers under scan_layers).
  assert costs["model_flops_per_device"] > 0
  assert 0.5 < costs["xla_flops_per_device"] / costs["model_flops_per_device"] < 3
  assert costs["step_seconds_at_mfu"] == pytest.approx(
      costs["model_flops_per_device"] / (0.5 * 1e12))
  with pytest.raises(ValueError, match="grad_cache_chunk 16 must divide"):
    aot.compile_train_step(_config(tiny_init, 40, grad_cache=True))


def test_aot_command_line(tiny_init):
  out = subprocess.run(
      [sys.executable, "-m", "gembed.cli", "aot", "--config", os.path.join(ROOT, "configs/finetune.py:tiny"),
       f"--config.model.init={tiny_init}", "--config.model.projection_dim=32",
       "--config.loss.mrl_dims=(32, 16)"],
      capture_output=True, text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert out.returncode == 0, out.stderr
  assert "cpu x 8, mesh (data, fsdp, tensor) = (8, 1, 1)" in out.stdout
  assert "peak_estimate" in out.stdout
  bad = subprocess.run([sys.executable, "-m", "gembed.cli", "aot", "--config",
                        os.path.join(ROOT, "configs/finetune.py:tiny"), "--config.train.bogus=1"],
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "bogus" in bad.stderr


def test_tpu_topology_compiles_where_libtpu_is_installed(tiny_init):
  pytest.importorskip("libtpu", reason="libtpu not installed (pip install 'gembed[tpu]')")
  compiled, _ = aot.compile_train_step(_config(tiny_init, 64), aot.topology_devices("v5e:2x2"))
  assert aot.memory_report(compiled)["temp"] > 0


def _same_layout(got, want, shapes):
  """Leaf by leaf: the same devices and the same split of every dimension."""
  pairs = zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
              jax.tree_util.tree_leaves(shapes))
  return all(g.is_equivalent_to(w, len(s.shape)) for g, w, s in pairs)


def test_trainer_aot_and_bench_use_one_state_layout(tiny_init):
  """The trainer's state layout (gembed.state.abstract_train_state) is what the AOT check
  compiles and what `gembed bench train` places its state on and compiles."""
  from gembed import sharding
  from gembed.optim import make_optimizer
  from gembed.state import abstract_train_state, shardings_of
  from gembed.tools.bench.common import train_setup

  config = _config(tiny_init, 64, mesh="data_fsdp")
  config.model.projection_bias = False
  compiled, model_config = aot.compile_train_step(config)
  abstract = abstract_train_state(model_config, make_optimizer(config.optim)[0],
                                  sharding.make_mesh("data_fsdp"))
  assert _same_layout(compiled.input_shardings[0][0], shardings_of(abstract), abstract)

  # The benchmark: MiniLM's own head width and a data mesh; its parameters, placed and compiled.
  from gembed.formats import modeldir
  rows = [{"query": f"question {i}", "positive": f"answer {i}", "negative": f"other {i}"}
          for i in range(32)]
  state, step, batches, _, _ = train_setup(tiny_init, rows, 16, 32, [32, 16])
  bench_config = modeldir.load_model(tiny_init)[0].config.replace(projection_dim=32)
  want = abstract_train_state(bench_config, make_optimizer(config.optim)[0],
                              sharding.make_mesh("data")).params
  placed = jax.tree_util.tree_map(lambda x: x.sharding, state.params)
  assert _same_layout(placed, shardings_of(want), want)
  compiled_params = step.lower(state, batches[0]).compile().input_shardings[0][0].params
  assert _same_layout(compiled_params, shardings_of(want), want)
