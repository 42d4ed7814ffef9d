"""The sentence-transformers peer of the recipe, trained on the same data, budget and dims.

What a sentence-transformers user would run for the same job: the init checkpoint + a new
`Dense` head of the same width + `Normalize`, `MatryoshkaLoss(MultipleNegativesRankingLoss)`
over the recipe's MRL dims at the recipe's temperature, AdamW with linear warmup and decay and
gradient clipping, stage 1 (pairs) then one fine-tuning stage (triples), one task per batch
drawn with the recipe's mixture rates. The rows are the recipe's own (its files after
placeholders, labelled sets as (text, label text, other label) rows, mined negatives), so the
two sides differ in framework and method, not in data. Needs the `test` extra (PyTorch).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def stage_rows(stage):
  """[(task name, Rows)] and mixture rates of a resolved trainer config."""
  from gembed.data.labelled import read_task_rows
  from gembed.data.mixture import mixture_rates
  from gembed.data.sources import TaskSpec

  d = stage.data
  rows = [(t.name, read_task_rows(t.source, list(t.files), d.num_negatives, stage.train.seed))
          for t in d.tasks]
  specs = [TaskSpec(name=t.name, rate=t.rate or None, weight=t.weight) for t in d.tasks]
  rates = mixture_rates([len(r) for _, r in rows], specs, d.mixing, d.mixing_temperature)
  return rows, rates


def batches(rows, rates, steps: int, batch_size: int, with_negative: bool, seed: int,
            task_order: str = "random"):
  """`steps` batches of `batch_size` rows, each from one task: a seeded draw per step at the
  mixture's rates, or with task_order "stratified" gembed's stratified order
  (gembed.data.mixture.task_choices, with the peer's seed); each task's rows are shuffled and
  cycled. Rows are (query, positive[, negative]) text tuples; for stage 2 only rows with a
  negative (MultipleNegativesRankingLoss takes one column per text)."""
  from gembed.data.mixture import task_sequence

  rng = np.random.default_rng(seed)
  orders, cursors = [], []
  for _, r in rows:
    keep = np.flatnonzero(r.negative_valid[:, 0]) if with_negative else np.arange(len(r))
    orders.append(rng.permutation(keep))
    cursors.append(0)
  tasks = (task_sequence(rates, seed, task_order, steps) if task_order == "stratified"
           else rng.choice(len(rows), size=steps, p=rates))
  for t in tasks:
    take = [orders[t][(cursors[t] + i) % len(orders[t])] for i in range(batch_size)]
    cursors[t] += batch_size
    r = rows[t][1]
    yield [(r.query[i], r.positive[i]) + ((r.negatives[i, 0],) if with_negative else ())
           for i in take]


def train_peer(init_dir: str, stages, dims, output: str, *, learning_rate: float = 2e-5,
               max_length: int = 128, seed: int = 0) -> str:
  """Trains the peer through `stages` (resolved trainer configs: pairs, then triples) and saves
  it as a sentence-transformers directory at `output` (gembed reads those)."""
  import torch
  from sentence_transformers import SentenceTransformer, losses, models

  torch.manual_seed(seed)
  base = SentenceTransformer(init_dir, device="cpu")
  init_max_length = base.max_seq_length
  base.max_seq_length = max_length
  width = base.get_embedding_dimension()
  head = models.Dense(width, max(dims), activation_function=torch.nn.Identity())
  model = SentenceTransformer(modules=[base[0], base[1], head, models.Normalize()], device="cpu")
  temperature = stages[0].loss.temperature
  loss_fn = losses.MatryoshkaLoss(
      model, losses.MultipleNegativesRankingLoss(model, scale=1.0 / temperature), list(dims))
  total = sum(s.train.steps for s in stages)
  warmup = max(1, total // 10)
  optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
  schedule = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda i: min((i + 1) / warmup, max(0.0, (total - i) / max(1, total - warmup))))

  def features(texts):
    return {k: v.to("cpu") if torch.is_tensor(v) else v for k, v in model.preprocess(texts).items()}

  model.train()
  step = 0
  for index, stage in enumerate(stages):
    rows, rates = stage_rows(stage)
    with_negative = stage.data.num_negatives > 0
    for batch in batches(rows, rates, stage.train.steps, stage.data.global_batch_size,
                         with_negative, seed + index, stage.data.task_order):
      columns = [features([row[k] for row in batch]) for k in range(len(batch[0]))]
      loss = loss_fn(columns, None)
      optimizer.zero_grad()
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()
      schedule.step()
      step += 1
      if step % 10 == 0 or step == total:
        log.info("peer step %d/%d: loss %.4f", step, total, loss.item())
  # Saved with the init's length: gembed evaluates the init and its own models at that length.
  model.max_seq_length = init_max_length
  model.save(output)
  return output
