"""`gembed bench train`: training examples/s, gembed vs sentence-transformers (`--no-peer`:
gembed alone, without torch or TensorFlow)."""

from __future__ import annotations

import os
import statistics
import time

from gembed.tools.bench.common import model_dir, mrl_dims, read_rows, train_setup


def run(args) -> dict:
  """Training examples/s (and MFU), gembed vs sentence-transformers on the same batches."""
  import jax

  from gembed import batch as batch_schema

  dims = mrl_dims(model_dir(args))
  rows = read_rows(args.triples, args.batch_size * (args.steps + 1))
  state, step, batches, step_flops, peak = train_setup(
      model_dir(args), rows, args.batch_size, args.max_length, dims, args.grad_cache_chunk,
      args.buckets, args.dropout, args.length_groups)
  for batch in batches:  # compile every bucket pair once, outside the timing
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  result = {"batch_size": args.batch_size, "max_length": args.max_length, "mrl_dims": dims,
            "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "grad_cache_chunk": args.grad_cache_chunk, "dropout": args.dropout,
            "allocator": ("tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "")
                          else "the system's malloc"),  # both sides: one process
            "gembed_padding": (f"length buckets {tuple(args.buckets)} per batch"
                               + (f", {args.length_groups} length groups" if args.length_groups > 1 else "")),
            "step_shapes": sorted({tuple(batch_schema.text_lengths(b)) for b in batches})}
  # Tokens each step runs the encoder on, padding included: the work the padding policy sets.
  ours_tokens = [sum(g[k].size for g in batch_schema.row_groups(b)
                     for k in ("query_ids", "positive_ids", "negative_ids")) for b in batches[1:]]
  result["gembed_padded_tokens_per_step"] = statistics.mean(ours_tokens)
  if args.no_peer:  # gembed alone (an accelerator image without torch)
    times, achieved = [], []
    for i in range(1, len(batches)):
      start = time.perf_counter()
      state, metrics = step(state, batches[i])
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
      achieved.append(step_flops[i] / times[-1])
    return {**result, "steps_timed": len(times),
            "gembed_examples_per_s": args.batch_size / statistics.median(times),
            "gembed_mfu": statistics.median(achieved) / peak if peak else None}

  import torch
  from sentence_transformers import SentenceTransformer, losses, models

  device = "cuda" if torch.cuda.is_available() else "cpu"
  base = SentenceTransformer(model_dir(args), device=device)
  base.max_seq_length = args.max_length
  dense = models.Dense(dims[0], dims[0], activation_function=torch.nn.Identity())
  peer = SentenceTransformer(modules=[base[0], base[1], dense, models.Normalize()], device=device)
  peer.train()
  for module in peer.modules():  # the encoder's dropout layers (BERT's: 0.1), as gembed's
    if isinstance(module, torch.nn.Dropout):
      module.p = args.dropout
  loss_fn = losses.MatryoshkaLoss(peer, losses.MultipleNegativesRankingLoss(peer, scale=20.0), dims)
  opt = torch.optim.AdamW(peer.parameters(), lr=2e-5)

  def peer_step(chunk) -> int:
    """One step; returns its padded tokens (each text stream padded to its own longest)."""
    # sentence-transformers 6.2's preprocess output holds non-tensor entries too
    features = [{name: t.to(device) if torch.is_tensor(t) else t
                 for name, t in peer.preprocess([r[k] for r in chunk]).items()}
                for k in ("query", "positive", "negative")]
    loss = loss_fn(features, None)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()  # time the work, not the launch
    return sum(f["input_ids"].numel() for f in features)

  chunks = [rows[i * args.batch_size:(i + 1) * args.batch_size] for i in range(len(batches))]
  peer_step(chunks[0])  # warm-up
  ours_times, peer_times, ours_flops, peer_tokens = [], [], [], []
  for i in range(1, len(batches)):  # same real batches, alternating sides
    start = time.perf_counter()
    state, metrics = step(state, batches[i])
    jax.block_until_ready(metrics)
    ours_times.append(time.perf_counter() - start)
    ours_flops.append(step_flops[i] / ours_times[-1])
    start = time.perf_counter()
    peer_tokens.append(peer_step(chunks[i]))
    peer_times.append(time.perf_counter() - start)
  ours = args.batch_size / statistics.median(ours_times)
  theirs = args.batch_size / statistics.median(peer_times)
  # Padded tokens/s: the step's speed with the padding policies' difference taken out.
  ours_tps = statistics.median(n / t for n, t in zip(ours_tokens, ours_times))
  theirs_tps = statistics.median(n / t for n, t in zip(peer_tokens, peer_times))
  return {**result, "steps_timed": len(ours_times), "gembed_examples_per_s": ours,
          "sentence_transformers_examples_per_s": theirs, "ratio": ours / theirs,
          "peer_padded_tokens_per_step": statistics.mean(peer_tokens),
          "padded_tokens_per_s": {"gembed": ours_tps, "sentence_transformers": theirs_tps,
                                  "ratio": ours_tps / theirs_tps},
          "gembed_mfu": statistics.median(ours_flops) / peak if peak else None,
          "peer_padding": "dynamic (longest text in the batch)"}
