"""The README's main job: fine-tune all-MiniLM-L6-v2 (+ a new 384-d projection, MRL 384/192/96)
on the demo corpus built from the installed Python standard library and dependencies, then
evaluate on its held-out retrieval set. About ten minutes on 2 CPU cores (11.5 measured,
corpus build and both evaluations included; docs/benchmarks.md):

  gembed demo-data --output runs/demo-data
  python -m gembed.main --config configs/demo.py --workdir runs/demo \
      --config.data.dir=runs/demo-data/train --config.eval.data_dir=runs/demo-data/dev
"""

from configs import common


def get_config(arg=None):
  common.parse_arg(arg)  # no variants
  c = common.get_base_config()
  c.data.tasks = [
      common.task("docstrings", ["docstrings.jsonl"], "search result"),
      common.task("code", ["code.jsonl"], "code retrieval"),
      common.task("topics", ["topics.jsonl"], "question answering"),
  ]
  c.data.global_batch_size = 32
  c.data.query_length = 32
  c.data.length_buckets = (16, 32, 64, 128)
  c.data.document_length = 128
  c.data.shuffle_buffer = 5000
  c.loss.mrl_dims = (384, 192, 96)
  c.optim.learning_rate = 5e-5
  c.optim.warmup_steps = 15
  c.optim.total_steps = 150
  c.ckpt.every = 50
  c.eval.every = 0  # evaluate once, at the end
  c.eval.tasks = ("retrieval/python-docs",)
  c.train.log_every = 10
  return c
