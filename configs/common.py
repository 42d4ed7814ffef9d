"""Defaults shared by every experiment; one comment per field. Imports only ml_collections."""

import ml_collections

GEMINI_QUERY_PROMPT = "task: {task} | query: {text}"
GEMINI_DOCUMENT_FORMAT = "title: {title} | text: {text}"


def parse_arg(arg: str | None, **fields) -> ml_collections.ConfigDict:
  """The ARG of `--config FILE.py:ARG` as typed fields (big_vision's convention): the defaults
  in `fields` give names and types; "tiny" sets the first field, "variant=tiny,x=2" any. An
  unknown name or a value of the wrong type is an error naming it."""
  values = ml_collections.ConfigDict(fields)
  for i, item in enumerate(x for x in (arg or "").split(",") if x):
    name, sep, value = item.partition("=")
    if not sep:
      if i or not fields:
        raise ValueError(f"config argument {item!r}: expected name=value (fields: "
                         f"{', '.join(fields) or 'none'})")
      name, value = next(iter(fields)), item
    if name not in fields:
      raise ValueError(f"config argument {name!r}: fields are {', '.join(fields) or 'none'}")
    values[name] = _typed(name, value, type(fields[name]))
  return values


def _typed(name: str, value: str, kind: type):
  if kind is bool:
    if value.lower() not in ("true", "false"):
      raise ValueError(f"config argument {name}={value!r}: expected true or false")
    return value.lower() == "true"
  try:
    return kind(value)
  except ValueError:
    raise ValueError(f"config argument {name}={value!r}: expected {kind.__name__}") from None


def task(name, files=(), prompt_task="search result", rate=0.0, source="jsonl", tfds_name="",
         tfds_data_dir="", split="train", weight=1.0):
  """One training dataset: JSONL, TFRecord or ArrayRecord files (or globs of shards) relative to
  data.dir (source = "jsonl" | "tfrecord" | "arrayrecord"), or
  a TFDS dataset (a registered name or a prepared directory); rate is used when data.mixing = 'explicit',
  weight multiplies the rate of the proportional and temperature rules (then renormalised).
  source = "classification" | "clustering" reads {"text", "label"} files as (text, label text)
  or (text, same-label text) rows (gembed/data/labelled.py); name tasks with [A-Za-z0-9_.:]."""
  return ml_collections.ConfigDict(
      {"name": name, "files": list(files), "prompt_task": prompt_task, "rate": rate,
       "source": source, "tfds_name": tfds_name, "tfds_data_dir": tfds_data_dir, "split": split,
       "weight": weight})


# The pair sets of shared/data/training and their prompt tasks: stage 1 reads them as they are,
# configs/finetune.py:mined reads them after `gembed mine` added negatives.
PAIR_SETS = (("medquad", "question answering"), ("quora", "sentence similarity"),
             ("mrpc", "sentence similarity"), ("cosqa", "code retrieval"))


def pair_tasks(file_pattern: str):
  """One task per pair set; file_pattern names its file, e.g. "{name}-pairs.jsonl"."""
  return [task(name, [file_pattern.format(name=name)], prompt_task) for name, prompt_task in PAIR_SETS]


def get_base_config():
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.init = "all-MiniLM-L6-v2"  # any --model spec: HF dir, gembed workdir (params only)
  c.model.projection_dim = 384  # new linear head width (method.md's d); 0 keeps the init's head
  c.model.projection_bias = True  # bias of the projection head (open in the report)
  c.model.projection_init = "orthogonal"  # orthogonal | lecun_normal (random either way)
  c.model.dropout_rate = 0.1  # hidden/attention dropout while training
  c.model.compute_dtype = "float32"  # "bfloat16" on TPU/GPU; parameters stay float32
  c.model.remat = False  # rematerialise layers in the backward pass
  c.model.scan_layers = False  # nn.scan over stacked layers: one layer compiled (deep LLMs)
  c.model.keep_layers = ()  # indices of the init's layers to keep (a student of its teacher's
  #                          own layers, e.g. (0, 3, 5)); () = every layer
  c.model.remat_policy = "nothing_saveable"  # what remat keeps (jax.checkpoint_policies name):
  #   nothing_saveable (least memory) | dots_with_no_batch_dims_saveable | dots_saveable
  c.model.lora_rank = 0  # > 0: low-rank adapters on a frozen encoder (docs/adapters.md); 0 = off
  c.model.lora_alpha = 16.0  # adapter output scale = lora_alpha / lora_rank
  c.model.lora_targets = ("query", "key", "value", "out", "mlp_in", "mlp_out")  # adapted projections

  c.prompts = ml_collections.ConfigDict()
  c.prompts.query = GEMINI_QUERY_PROMPT  # "" trains without a query prompt
  c.prompts.document = GEMINI_DOCUMENT_FORMAT  # "" joins title + " " + text (MTEB)
  c.prompts.default_task = "search result"  # task used by `gembed encode --task` when omitted
  c.prompts.task_dropout = 0.0  # probability that a training query's task string is empty

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # base directory of relative task files
  c.data.tasks = []  # list of common.task(...)
  c.data.mixing = "proportional"  # proportional | temperature | explicit (task rates)
  c.data.mixing_temperature = 1.0  # for mixing = "temperature": rate ~ size ** (1 / T)
  c.data.task_order = "random"  # random (a draw per step) | stratified (each task's share of
  #                              every window of steps follows its rate within about one step)
  c.data.global_batch_size = 64  # rows per step over all hosts; one task per step
  c.data.query_length = 64  # tokens per query (with prompt), static for jit
  c.data.document_length = 128  # tokens per positive / hard negative
  c.data.length_buckets = ()  # cut each batch to the bucket of its longest text (hosts agree);
  #                             () = always the full query_length / document_length
  c.data.length_groups = 1  # > 1 (with length_buckets): each batch's rows sorted by length and cut
  #                           into this many groups, each padded to its own bucket (less padding)
  c.data.num_negatives = 0  # hard-negative slots per row (0 for pairs)
  c.data.shuffle_buffer = 10_000  # examples in SeqIO's shuffle buffer
  c.data.use_cached = False  # True: read the tasks' offline cache (`gembed cache`), not their sources
  c.data.cache_dir = ""  # where `gembed cache` writes and data.use_cached reads (a directory per task)
  c.data.skip_bad_rows = False  # True: skip bad rows (named in WORKDIR/bad_rows.txt) instead of failing

  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.05  # tau of the NCE loss
  c.loss.mrl_dims = (384, 192, 96)  # Matryoshka prefix dims (each <= the embedding width)
  c.loss.mrl_weights = ()  # one weight per dim; () = all 1
  c.loss.decoupled = False  # ablation: drop the own positive from the denominator
  c.loss.ring = False  # ring NCE (shard_map + ppermute): no device holds the B x B logits
  c.loss.prefix_distill = 0.0  # weight of the MRL prefixes' distillation from the full width
  c.loss.contrastive_weight = 1.0  # weight of the MRL NCE loss (0: distillation terms alone)

  c.distill = ml_collections.ConfigDict()  # a teacher model's embeddings taught (docs/distill.md)
  c.distill.teacher = ""  # any --model spec sharing the student's tokenizer; "" = no teacher
  # A `gembed teacher-embed` directory: the teacher's embeddings read with the batches instead of
  # computed in every step ("" = computed in the step).
  c.distill.teacher_embeddings = ""
  c.distill.embedding_weight = 0.0  # weight of matching each text's teacher embedding
  c.distill.embedding_loss = "cosine"  # cosine | mse (raw values, as EmbedDistillLoss)
  c.distill.similarity_weight = 0.0  # weight of matching the batch's query-document similarities

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # adamw | sgd
  c.optim.learning_rate = 2e-5  # peak learning rate
  c.optim.warmup_steps = 10  # linear warmup from 0
  c.optim.total_steps = ml_collections.FieldReference(100)  # schedule length (= train.steps)
  c.optim.decay = "linear"  # linear | cosine | constant after warmup
  c.optim.end_factor = 0.0  # final lr = peak * end_factor
  c.optim.weight_decay = 0.01  # decoupled weight decay on matrices (not biases/LayerNorm)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.clip_norm = 1.0  # global-norm gradient clipping; 0 disables
  c.optim.projection_lr_multiplier = 1.0  # projection head's lr = peak * this (new head: > 1)

  c.train = ml_collections.ConfigDict()
  c.train.steps = c.optim.get_ref("total_steps")  # optimizer steps of this stage
  c.train.seed = 0  # parameter init, dropout and data order
  c.train.log_every = 10  # steps between logged metrics
  c.train.distributed = False  # jax.distributed.initialize() (multi-host TPU); set by launch/
  c.train.coordinator_address = ""  # "host:port" of process 0; "" = discovered (Cloud TPU)
  c.train.num_processes = 0  # with coordinator_address: the number of processes (hosts)
  c.train.process_id = 0  # with coordinator_address: this process's index
  c.train.grad_cache = False  # GradCache: activation memory of one chunk, not the global batch
  c.train.grad_cache_chunk = 32  # rows per GradCache chunk (divides the global batch; a multiple of data x fsdp devices)
  c.train.grad_cache_tokens = 0  # > 0: each step shape's chunk = the most rows within this many tokens (replaces grad_cache_chunk)
  c.train.peak_flops_per_device = 0.0  # for MFU; 0 = known table for TPU/GPU, measured on CPU
  c.train.compilation_cache = ""  # persistent XLA cache dir; "" = ~/.cache/gembed/xla, "off"
  c.train.tracker = ""  # "wandb" | "trackio": metrics there too (an extra); "" = TensorBoard only
  c.train.tracker_project = "gembed"  # the tracker's project

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = "data"  # preset (data | fsdp | data_fsdp | data_tensor) or "D,F,T"

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 50  # steps between checkpoints
  c.ckpt.keep = 3  # most recent checkpoints kept
  c.ckpt.async_save = True  # write in the background while training continues

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0  # steps between dev evaluations; 0: only at the end
  c.eval.data_dir = ""  # directory in shared/data layout holding the DEV sets
  c.eval.tasks = ()  # task names/prefixes under data_dir; () = all
  c.eval.metric = "task_mean"  # main score that picks the best checkpoint
  c.eval.batch_size = 64
  c.eval.max_examples = 0  # cap per set (0 = all)
  return c
