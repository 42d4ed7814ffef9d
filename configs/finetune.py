"""Stage 2, fine-tuning: (query, positive, hard negative) triples, one task per batch.

Initialises from stage 1's final checkpoint (a fresh optimizer; the projection head is kept):

  python -m gembed.main --config configs/finetune.py --workdir runs/finetune \
      --config.data.dir=../shared/data/training --config.model.init=runs/prefinetune

`--config configs/finetune.py:proportional` samples tasks by size instead (XNLI dominates): the
second ingredient of a soup that differs in data mixture (docs/soup.md).
`--config configs/finetune.py:tiny` is a seconds-long variant for smoke tests.
`--config configs/finetune.py:mined` trains on the pair sets with the negatives `gembed mine` wrote
(data.dir holds medquad.jsonl, quora.jsonl, mrpc.jsonl, cosqa.jsonl; docs/data-stage.md).
"""

from configs import common


VARIANTS = ("", "proportional", "tiny", "mined")


def get_config(arg=None):
  variant = common.parse_arg(arg, variant="").variant
  if variant not in VARIANTS:
    raise ValueError(f"configs/finetune.py:{variant}: variants are 'proportional', 'tiny' and "
                     "'mined'")
  c = common.get_base_config()
  c.data.tasks = [
      common.task("snli", ["snli-triples.jsonl"], "sentence similarity"),
      common.task("xnli", ["xnli-triples.jsonl"], "sentence similarity"),
  ]
  c.data.num_negatives = 1
  c.data.global_batch_size = 64
  c.data.query_length = 64
  c.data.length_buckets = (16, 32, 64, 128)
  c.data.document_length = 64
  c.data.mixing = "temperature"
  c.data.mixing_temperature = 2.0
  c.optim.learning_rate = 2e-5
  c.optim.warmup_steps = 20
  c.optim.total_steps = 300
  c.ckpt.every = 100
  c.eval.every = 100
  c.eval.tasks = ("sts/stsb",)  # read with split=dev: stsb/dev.jsonl
  if variant == "mined":
    c.data.tasks = common.pair_tasks("{name}.jsonl")
    c.data.document_length = 128
  if variant == "proportional":
    c.data.mixing = "proportional"
  elif variant == "tiny":
    c.data.global_batch_size = 8
    c.data.query_length = 16
    c.data.document_length = 16
    c.optim.total_steps = 4
    c.optim.warmup_steps = 1
    c.ckpt.every = 2
    c.eval.every = 0
    c.train.log_every = 1
  return c
