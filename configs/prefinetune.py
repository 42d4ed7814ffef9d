"""Stage 1, pre-finetuning: many noisy (query, positive) pairs, no hard negatives, the largest
batch that fits. Starts from the pretrained checkpoint with a new projection head.

  python -m gembed.main --config configs/prefinetune.py --workdir runs/prefinetune \
      --config.data.dir=../shared/data/training
"""

from configs import common


def get_config(arg=None):
  common.parse_arg(arg)  # no variants
  c = common.get_base_config()
  c.data.tasks = common.pair_tasks("{name}-pairs.jsonl")
  c.data.num_negatives = 0
  c.data.global_batch_size = 128
  c.data.query_length = 48
  c.data.document_length = 128
  c.optim.learning_rate = 5e-5
  c.optim.warmup_steps = 20
  c.optim.total_steps = 400
  c.ckpt.every = 100
  return c
