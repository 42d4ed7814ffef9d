"""Distillation: a shallower student made of its teacher's own layers learns the teacher's
embeddings (docs/distill.md).

  python -m gembed.main --config configs/distill.py --workdir runs/student \
      --config.model.init=runs/recipe/soup --config.distill.teacher=runs/recipe/soup \
      --config.data.dir=../shared/data

The teacher embeds every batch inside the sharded step (no gradient, no dropout); the student
keeps layers 0, 3 and 5 of a 6-layer teacher (`model.keep_layers`), its embeddings and its head.
Data: the recipe's training sets (configs/recipe.py), none of its held-out evaluation sets; the
distillation terms need no labels, the contrastive term keeps the student on the tasks.
`--config configs/distill.py:contrastive` is the same student and budget without the teacher
(the baseline distillation must beat); `:tiny` is a seconds-long smoke variant.
"""

from configs import common

VARIANTS = ("", "contrastive", "tiny")


def get_config(arg=None):
  variant = common.parse_arg(arg, variant="").variant
  if variant not in VARIANTS:
    raise ValueError(f"configs/distill.py:{variant}: variants are 'contrastive' and 'tiny'")
  c = common.get_base_config()
  c.model.init = "runs/recipe/soup"  # the student starts from the teacher's own layers
  # Half of a 6-layer MiniLM. First and last layers kept: untrained, (0, 3, 5) is the closest
  # to its teacher of the half-depth choices (docs/distill.md, "Which layers").
  c.model.keep_layers = (0, 3, 5)
  c.model.projection_dim = 0  # keep the teacher's head: the student's output width is the teacher's
  c.distill.teacher = "runs/recipe/soup"
  c.distill.embedding_weight = 1.0
  c.distill.similarity_weight = 1.0
  c.loss.contrastive_weight = 1.0
  c.loss.prefix_distill = 1.0
  cls = "classification"
  c.data.tasks = [
      common.task("medquad", ["training/medquad-pairs.jsonl"], "question answering"),
      common.task("snli", ["training/snli-triples.jsonl"], "sentence similarity"),
      common.task("xnli", ["training/xnli-triples.jsonl"], "sentence similarity"),
      common.task("emotion", [f"{cls}/tweeteval-emotion/train.jsonl"], "classification",
                  source="classification"),
      common.task("xlmt", [f"{cls}/xlmt-sentiment/*/train.jsonl"], "classification",
                  source="classification"),
  ]
  c.data.num_negatives = 1  # NLI contradictions, another class's text; pairs leave it empty
  c.data.global_batch_size = 64
  c.data.query_length = 64
  c.data.document_length = 128
  c.data.length_buckets = (32, 64, 128)
  c.data.mixing = "temperature"
  c.data.mixing_temperature = 2.0
  c.prompts.query = ""  # the recipe trains without prompts (MiniLM was trained without)
  c.prompts.document = ""
  c.optim.learning_rate = 1e-4  # a shallower student moves further than a fine-tuned model
  c.optim.warmup_steps = 10
  c.optim.total_steps = 150
  c.ckpt.every = 50
  c.eval.every = 50
  c.eval.tasks = ("sts/stsb",)  # dev split: model selection only
  if variant == "contrastive":
    c.distill.teacher = ""
    c.distill.embedding_weight = 0.0
    c.distill.similarity_weight = 0.0
  elif variant == "tiny":
    c.model.keep_layers = (1,)
    c.data.tasks = [common.task("snli", ["snli-triples.jsonl"], "sentence similarity")]
    c.data.global_batch_size = 8
    c.data.query_length = 16
    c.data.document_length = 16
    c.data.length_buckets = ()
    c.loss.mrl_dims = (32, 16)
    c.train.grad_cache = True  # the teacher embeds in chunks too
    c.train.grad_cache_chunk = 8
    c.optim.total_steps = 2
    c.optim.warmup_steps = 1
    c.ckpt.every = 2
    c.eval.every = 0
    c.train.log_every = 1
  return c
