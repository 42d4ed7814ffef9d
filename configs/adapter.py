"""Task adapters (docs/adapters.md): LoRA on a frozen all-MiniLM-L6-v2, trained on one
classification set read as a contrastive task (text -> its label's text, another label's text as
the hard negative), against full fine-tuning of the same model on the same rows and budget:

  python -m gembed.main --config configs/adapter.py --workdir runs/banking77-lora \
      --config.data.dir=../shared/data/classification
  python -m gembed.main --config configs/adapter.py:full --workdir runs/banking77-full \
      --config.data.dir=../shared/data/classification

data.dir holds `banking77/train.jsonl` ({"text", "label"}). The LoRA run also writes its adapter
to WORKDIR/adapter (`gembed encode|eval|export --model all-MiniLM-L6-v2 --adapter DIR`).
`:tiny` is a seconds-long variant for smoke tests.
"""

from configs import common

VARIANTS = ("lora", "full", "tiny")


def get_config(arg=None):
  a = common.parse_arg(arg, variant="lora", rank=8, lr=0.0)
  if a.variant not in VARIANTS:
    raise ValueError(f"configs/adapter.py:{a.variant}: variants are {', '.join(VARIANTS)}")
  c = common.get_base_config()
  c.data.tasks = [common.task("banking77", ["banking77/train.jsonl"], "classification",
                              source="classification")]
  c.data.num_negatives = 1
  c.data.global_batch_size = 32
  c.data.query_length = 32
  c.data.document_length = 16  # label texts ("card arrival") are a few tokens
  c.model.projection_dim = 0  # keep MiniLM's output: the adapter is the only change to the base
  c.optim.warmup_steps = 10
  c.optim.total_steps = 200
  c.ckpt.every = 200
  c.train.log_every = 20
  if a.variant == "full":
    c.optim.learning_rate = a.lr or 5e-5
  else:
    c.model.lora_rank = a.rank
    # Adapters start at zero and have few parameters: they take a far larger step than the
    # pretrained weights. 3e-3 beat 1e-3 on a held-out part of train (docs/benchmarks.md).
    c.optim.learning_rate = a.lr or 3e-3
  if a.variant == "tiny":
    c.data.global_batch_size = 8
    c.data.query_length = 16
    c.data.document_length = 8
    c.optim.total_steps = 4
    c.optim.warmup_steps = 1
    c.ckpt.every = 2
    c.train.log_every = 1
  return c
