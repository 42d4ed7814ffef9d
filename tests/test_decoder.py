"""Decoder-LLM families: hidden states equal Hugging Face transformers' (PyTorch) on the same
weights, causal and bidirectional (an explicit all-visible 4D mask there), allclose 1e-4."""

import json
import os

import jax
import numpy as np
import pytest

from gembed.formats import hf
from gembed.models.decoder import DecoderEncoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 512


def _hf_model(family):
  common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                attn_implementation="eager")
  if family == "llama":
    config, cls = transformers.LlamaConfig(**common), transformers.LlamaModel
  elif family == "qwen2":
    config, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
  elif family == "gemma":
    config, cls = transformers.GemmaConfig(**common, head_dim=24), transformers.GemmaModel
  torch.manual_seed(0)
  model = cls(config).eval()
  with torch.no_grad():  # random norm weights and biases, so that every tensor matters
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith(".bias"):
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma"])
def family_checkpoint(request, tmp_path_factory):
  model = _hf_model(request.param)
  path = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(path, safe_serialization=True)
  return request.param, model, path


def _inputs():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, VOCAB, size=(3, 12)).astype(np.int32)
  mask = np.ones((3, 12), np.int32)
  mask[1, 8:] = 0
  mask[2, 3:] = 0
  ids[2, 3:] = 0  # pad id 0 is also a real token id elsewhere: the mask decides, not the id
  return ids, mask


def _ours(path, causal):
  config = hf.read_model_config(path).replace(causal=causal)
  params = hf.load_encoder_params(path, config)
  ids, mask = _inputs()
  return np.asarray(DecoderEncoder(config).apply({"params": params["encoder"]}, ids, mask)), mask


def _theirs(model, causal):
  ids, mask = _inputs()
  ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
  if not causal:  # every query position sees every real token: an additive 4D mask (eager
    # attention adds a 4D mask to the scores, so a boolean one would add 0/1, not mask)
    visible = mask_t[:, None, None, :].bool().expand(-1, 1, ids.shape[1], -1)
    mask_t = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
  base = model.model if hasattr(model, "lm_head") else model
  with torch.no_grad():
    return base(input_ids=ids_t, attention_mask=mask_t).last_hidden_state.numpy()


@pytest.mark.parametrize("causal", [True, False])
def test_hidden_states_match_transformers(family_checkpoint, causal):
  family, model, path = family_checkpoint
  ours, mask = _ours(path, causal)
  theirs = _theirs(model, causal)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


def test_bidirectional_differs_from_causal(family_checkpoint):
  _, _, path = family_checkpoint
  causal, mask = _ours(path, True)
  bidirectional, _ = _ours(path, False)
  assert np.abs(causal[0] - bidirectional[0]).max() > 1e-2  # the mask really is removed


def test_sharded_bf16_checkpoint_imports(tmp_path):
  model = _hf_model("llama").to(torch.bfloat16)
  model.save_pretrained(str(tmp_path), safe_serialization=True, max_shard_size="50KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
  config = hf.read_model_config(str(tmp_path))
  params = hf.load_encoder_params(str(tmp_path), config)
  q = model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # (heads * head_dim, hidden)
  np.testing.assert_array_equal(params["encoder"]["layer_1"]["attention"]["query"]["kernel"],
                                q.T.reshape(64, 4, 16))
  # Export direction of the same table gives the checkpoint's tensors back.
  back = hf.encoder_params_to_hf(params, config)
  np.testing.assert_array_equal(back["layers.1.self_attn.q_proj.weight"], q)


def test_unsupported_decoder_variants_are_refused_by_name(tmp_path):
  config = _hf_model("llama").config.to_dict()
  config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(hf.CheckpointImportError, match="rope scaling 'llama3'"):
    hf.read_model_config(str(tmp_path))


def test_decoder_train_step_shards_like_a_single_device():
  """GQA with 2 key/value heads on a (2, 2, 2) mesh: heads and MLP over `tensor`."""
  import functools

  import chex

  from gembed import sharding
  from gembed.models import embedder
  from gembed.models.config import ModelConfig
  from gembed.steps import LossConfig, loss_fn
  from tiny import random_batch

  config = ModelConfig(family="llama", vocab_size=2048, hidden_size=32, num_layers=2, num_heads=4,
                       num_kv_heads=2, intermediate_size=64, max_position=64, layer_norm_eps=1e-6,
                       hidden_act="silu", projection_dim=16)
  # tau 0.5 keeps gradients O(1): at 0.05 they reach ~6 and float32 reduction order alone moves
  # single elements by 1e-5.
  loss = LossConfig(temperature=0.5, dims=(16, 8))
  batch = random_batch(0, batch=8)
  results = []
  for shape in ((1, 1, 1), (2, 2, 2)):
    devices = jax.devices()[:1] if shape == (1, 1, 1) else None
    mesh = sharding.make_mesh(shape, devices)
    params = embedder.init_params(config, jax.random.PRNGKey(0))
    params = jax.device_put(params, sharding.param_shardings(embedder.logical_axes(config), params, mesh))
    fn = jax.jit(jax.value_and_grad(functools.partial(loss_fn, model_config=config, loss_config=loss),
                                    has_aux=True))
    results.append(jax.device_get(fn(params, jax.device_put(batch, sharding.batch_sharding(mesh)), None)))
  chex.assert_trees_all_close(results[1], results[0], atol=1e-5, rtol=1e-5)
