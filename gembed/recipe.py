"""`gembed recipe`: the report's whole recipe at a chosen budget, one resumable command.

    demo data -> stage 1 -> mine -> ingredients -> soup -> evaluate -> report

Each step writes under the workdir and is skipped when its output is complete, so a killed
run started again continues where it stopped (a training step resumes from its checkpoints):

  demo-data/       the demo corpus (`gembed demo-data`): code pairs + the python-docs dev set
  head-init/       the init model with an MRL-ordered projection head fitted to its own
                   embeddings of stage-1 texts (gembed/headfit.py); stage 1 starts from it
  dev/             links to the dev sets (model selection and the greedy soup)
  stage1/          pre-finetuning workdir (a model directory)
  mined/<task>.jsonl   the stage-1 tasks' pairs with negatives mined by the stage-1 model
  <ingredient>/    one fine-tuning workdir per ingredient (dev-selected best checkpoint)
  soup/            the greedy soup of the ingredients' best checkpoints
  eval/<model>/    held-out results.json of init, stage 1, each ingredient and the soup
  report.md, report.png, report.json

Before any training, the training files are checked against the held-out sets: a set that
shares a (case- and space-normalised) text with them is refused, naming it.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import json
import logging
import multiprocessing
import os

import ml_collections
import numpy as np

from gembed import checkpoint
from gembed.textio import InputError, expand_files, iter_jsonl

log = logging.getLogger(__name__)

def _expand(pattern: str, paths: dict) -> list[str]:
  """A task file name with {data}/{demo}/{mined} filled in; globs expanded (sorted)."""
  return expand_files(pattern.format(**paths))


def override(stage, **overrides):
  """A copy of a trainer config with dotted keys (`model.init=...`) set."""
  stage = copy.deepcopy(stage)
  with stage.unlocked():
    for key, value in overrides.items():
      node = stage
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p] if p in node else None
        if node is None:
          break
      if node is None or leaf not in node:
        raise KeyError(f"{key}: not a key of the trainer config")
      node[leaf] = value
  return stage


def dotted(tree, prefix: str = "") -> dict:
  """A nested dict of config keys as {"a.b": value}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(dotted(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def resolve_stage(stage, paths: dict, **overrides):
  """A copy of a trainer config with its task files resolved and `overrides` set."""
  stage = override(stage, **overrides)
  with stage.unlocked():
    stage.data.dir = ""
    for task in stage.data.tasks:
      task.files = [f for pattern in task.files for f in _expand(pattern, paths)]
  return stage


# --- held-out check -------------------------------------------------------------------------

def normalize(text: str) -> str:
  """Identity of a text for overlap checks: case-folded, whitespace collapsed."""
  return " ".join(text.casefold().split())


def training_texts(stages) -> set[str]:
  """Every text a training config reads: pairs/triples fields and labelled texts."""
  texts = set()
  for stage in stages:
    for task in stage.data.tasks:
      for path in task.files:
        if not os.path.exists(path):
          continue  # mined files are written from stage-1 files, which are read here
        for _, row in iter_jsonl(path):
          for key in ("query", "positive", "negative", "text"):
            if isinstance(row.get(key), str):
              texts.add(normalize(row[key]))
          for neg in row.get("negatives") or ():
            if isinstance(neg, str):
              texts.add(normalize(neg))
  return texts


def evaluation_texts(s) -> set[str]:
  """Every text of an evaluation set (any type, every split a set's scores depend on)."""
  files = ([os.path.join(s.path, f) for f in ("corpus.jsonl", "queries.jsonl", "train.jsonl",
                                               "test.jsonl") if os.path.exists(os.path.join(s.path, f))]
           if os.path.isdir(s.path) else [s.path])
  texts = set()
  for path in files:
    for _, row in iter_jsonl(path):
      for key in ("text", "sentence1", "sentence2", "source", "target", "query"):
        if isinstance(row.get(key), str):
          texts.add(normalize(row[key]))
      for sentence in row.get("sentences") or ():
        texts.add(normalize(sentence))
      for key in ("positive", "negative"):
        for doc in row.get(key) or ():
          if isinstance(doc, str):
            texts.add(normalize(doc))
  texts.discard("")
  return texts


MIN_OVERLAP_WORDS = 3  # shorter texts ("good", "great" in sst2) are vocabulary, not examples


def check_held_out(stages, sets) -> dict[str, int]:
  """Raises InputError naming every held-out set that shares a text of at least
  MIN_OVERLAP_WORDS words with the training data; returns the number of distinct texts checked
  per set."""
  train = training_texts(stages)
  checked, overlapping = {}, []
  for s in sets:
    texts = evaluation_texts(s)
    shared = {t for t in texts & train if len(t.split()) >= MIN_OVERLAP_WORDS}
    checked[s.name] = len(texts)
    if shared:
      overlapping.append(f"{s.name} ({len(shared)} texts, e.g. {sorted(shared)[0][:80]!r})")
  if overlapping:
    raise InputError("held-out sets share texts with the training data: " + "; ".join(overlapping)
                     + ". Remove them from eval.tasks or the files from the training tasks.")
  log.info("held-out check: %d training texts share none with %d sets", len(train), len(sets))
  return checked


# --- steps ----------------------------------------------------------------------------------

def link_dev_sets(dev_dir: str, sources: dict[str, str]) -> str:
  """WORKDIR/dev in the layout of shared/data: one symlink per dev set."""
  for name, target in sources.items():
    if not os.path.exists(target):
      raise FileNotFoundError(f"dev set {name}: {target} not found")
    link = os.path.join(dev_dir, name)
    if os.path.islink(link) or os.path.exists(link):
      continue
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.abspath(target), link)
  return dev_dir


def training_done(workdir: str, steps: int) -> bool:
  done = checkpoint.checkpoint_steps(workdir)
  return bool(done) and done[-1] >= steps


def in_child(init, fn, *args, **kwargs):
  """fn(*args, **kwargs) in a fresh process (spawned: JAX and tf.data are not fork-safe);
  returns its result and re-raises its exception. `init()`, unless None, runs first in the
  child (the command's logging and quiet start-up). A training run's compiled programs and
  tf.data pipelines leave with its process: in one process the recipe's stages added up past
  12 GB and the kernel killed it."""
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=init) as pool:
    return pool.submit(fn, *args, **kwargs).result()


def train_stage(config, workdir: str, child_init=None) -> None:
  """Trains (or resumes) one stage in its own process (`in_child`); skipped when trained."""
  if training_done(workdir, config.train.steps):
    log.info("recipe: %s already trained (%d steps), skipped", workdir, config.train.steps)
    return
  from gembed.train import train_and_evaluate
  in_child(child_init, train_and_evaluate, config, workdir)


def fit_head(stage1, head_config, init: str, output: str) -> str:
  """Writes the init model plus a fitted orthogonal MRL head to `output` (gembed/headfit.py);
  returns the model to start stage 1 from."""
  from gembed import headfit
  from gembed.formats import modeldir
  from gembed.encode import TextEncoder
  from gembed.llmdata.mine import read_training_rows

  if os.path.exists(os.path.join(output, modeldir.META_FILE)):
    return output
  info, params = modeldir.load_model(init)
  width = info.config.hidden_size
  if info.config.projection_dim or stage1.model.projection_dim != width:
    raise ValueError(f"head.fit needs an init without a projection head and "
                     f"stage1.model.projection_dim == its width {width} (a rotation)")
  rng = np.random.default_rng(head_config.seed)
  per_task = head_config.pairs // len(stage1.data.tasks)
  pairs = []
  for task in stage1.data.tasks:
    rows = (read_training_rows(list(task.files)) if task.source == "jsonl" else [])
    pairs += [rows[i] for i in rng.permutation(len(rows))[:per_task]]
  encoder = TextEncoder(info, params, batch_size=head_config.batch_size,
                        max_length=head_config.max_length)
  queries = encoder.embed_raw([info.format_query(r["query"]) for r in pairs], progress=True)
  documents = encoder.embed_raw([info.format_document(r["positive"], r.get("title"))
                                 for r in pairs], progress=True)
  dims = tuple(d for d in stage1.loss.mrl_dims if d < width)
  kernel, history = headfit.fit_mrl_rotation(queries, documents, dims,
                                             temperature=stage1.loss.temperature,
                                             steps=head_config.steps, seed=head_config.seed)
  config = info.config.replace(projection_dim=width, projection_bias=stage1.model.projection_bias)
  head = {"kernel": kernel}
  if config.projection_bias:
    head["bias"] = np.zeros((width,), np.float32)
  modeldir.save_model(dataclasses.replace(info, config=config, mrl_dims=dims,
                                          source=f"{init} + fitted MRL head"),
                      {**params, "projection": head}, output)
  log.info("recipe: fitted an MRL head on %d pairs (prefix KL %s)", len(pairs),
           " -> ".join(f"{x:.3f}" for x in history))
  return output


def mine_negatives(stage1, task_names, mine_config, model: str, mined_dir: str) -> None:
  """Window-mined negatives for the named stage-1 tasks, with the stage-1 model."""
  from gembed.formats import modeldir
  from gembed.encode import TextEncoder
  from gembed.llmdata import mine

  config = mine.MiningConfig(method="window", num_negatives=mine_config.num_negatives,
                             top_k=mine_config.top_k, rank_window=tuple(mine_config.rank_window),
                             margin_ratio=mine_config.margin_ratio)
  tasks = {t.name: t for t in stage1.data.tasks}
  encoder = None
  for name in task_names:
    output = os.path.join(mined_dir, f"{name}.jsonl")
    if os.path.exists(f"{output}.summary.json"):
      continue
    if name not in tasks:
      raise ValueError(f"mine.tasks: {name!r} is not a stage-1 task ({', '.join(tasks)})")
    if encoder is None:
      info, params = modeldir.load_model(model)
      encoder = TextEncoder(info, params, batch_size=mine_config.batch_size,
                            max_length=mine_config.max_length)
    rows = mine.read_training_rows(list(tasks[name].files))
    corpus, positive_ids = mine.build_corpus(rows)
    mined, counts = mine.mine(rows, corpus, positive_ids, encoder=encoder, config=config,
                              model_name=model, work_dir=f"{output}.work")
    mine.write_jsonl(output, mined)
    mine.write_summary(output, {"model": model, "inputs": list(tasks[name].files),
                                "counts": counts})
    log.info("recipe: mined %s: %s", name, counts)


def dev_scorer(dev_dir: str, tasks, metric: str, batch_size: int):
  from gembed.encode import TextEncoder
  from gembed.evaluation import suite

  sets = suite.select(suite.discover(dev_dir, split="dev"), list(tasks))

  def score(info, params) -> float:
    encoder = TextEncoder(info, params, batch_size=batch_size)
    results = suite.evaluate(suite.ModelEmbedder(encoder), sets, [info.config.embedding_dim])
    return suite.main_score(results, metric)
  return score


def make_soup(models: list[str], output: str, dev_score, greedy: bool) -> dict:
  from gembed import soup
  record_path = os.path.join(output, soup.SOUP_LOG)
  if os.path.exists(record_path):
    with open(record_path, encoding="utf-8") as f:
      return json.load(f)
  return soup.make_soup(models, output, greedy=greedy, dev_score=dev_score)


def evaluate_model(model: str, sets, dims, output: str, batch_size: int, max_examples: int) -> dict:
  from gembed.formats import modeldir
  from gembed.encode import TextEncoder
  from gembed.evaluation import report, suite

  path = os.path.join(output, "results.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  info, params = modeldir.load_model(model)
  encoder = TextEncoder(info, params, batch_size=batch_size)
  results = suite.evaluate(suite.ModelEmbedder(encoder), sets, list(dims), max_examples,
                           progress=True)
  results = {"model": model, **results}
  report.write_results(results, output)
  return results


# --- report ---------------------------------------------------------------------------------

def type_means(results: dict) -> dict[str, dict[str, float]]:
  """{type: {dim: mean main score}} plus "type_mean"."""
  by_type: dict[str, list] = {}
  for task in results["tasks"].values():
    by_type.setdefault(task["type"], []).append(task["main_score"])
  out = {t: {d: float(np.mean([s[d] for s in scores])) for d in scores[0]}
         for t, scores in sorted(by_type.items())}
  out["type_mean"] = dict(results["type_mean"])
  return out


def report_markdown(all_results: dict[str, dict], soup_record: dict | None) -> str:
  names = list(all_results)
  dims = [str(d) for d in all_results[names[0]]["dims"]]
  means = {n: type_means(r) for n, r in all_results.items()}
  types = [t for t in means[names[0]] if t != "type_mean"]
  lines = ["# gembed recipe report", "",
           "Held-out sets (no shared source or text with the training data): "
           + ", ".join(all_results[names[0]]["tasks"]), "",
           "## Type mean at every MRL dimension", "",
           "| model | " + " | ".join(f"@{d}" for d in dims) + " |", "|---|" + "---:|" * len(dims)]
  init = means.get("init", {}).get("type_mean")
  for n in names:
    cells = []
    for d in dims:
      v = means[n]["type_mean"][d]
      delta = f" ({v - init[d]:+.2f})" if init and n != "init" else ""
      cells.append(f"{v:.2f}{delta}")
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  if init:
    lines += ["", f"Deltas are against the init at the same dimension; the init at full width "
              f"scores {init[dims[0]]:.2f}."]
  lines += ["", f"## Per type at @{dims[0]} and @{dims[-1]}", "",
            "| model | " + " | ".join(f"{t} @{dims[0]} | @{dims[-1]}" for t in types) + " |",
            "|---|" + "---:|---:|" * len(types)]
  for n in names:
    lines.append(f"| {n} | " + " | ".join(
        f"{means[n][t][dims[0]]:.2f} | {means[n][t][dims[-1]]:.2f}" for t in types) + " |")
  if soup_record:
    lines += ["", "## Soup", "", f"method: {soup_record.get('method')}, kept: "
              f"{', '.join(soup_record.get('kept', soup_record.get('models', [])))}"]
    for step in soup_record.get("steps", []):
      lines.append(f"- {step['name']}: own dev {step['own_score']:.3f}, soup dev "
                   f"{step['soup_score']:.3f}, {'kept' if step['kept'] else 'dropped'}")
  return "\n".join(lines) + "\n"


def plot_report(all_results: dict[str, dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, results in all_results.items():
    dims = results["dims"]
    ax.plot(dims, [results["type_mean"][str(d)] for d in dims], marker="o", label=name)
  ax.set_xscale("log", base=2)
  ax.set_xticks(dims, [str(d) for d in dims])
  ax.set_xlabel("embedding dimension (MRL prefix)")
  ax.set_ylabel("held-out type mean")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# --- the command ----------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
  """The recipe's resolved pieces: where everything lives and each stage's trainer config."""

  work: str
  paths: dict[str, str]  # the task-file placeholders: data, demo, mined
  dev_dir: str
  held_out: list  # suite.EvalSet
  init: str  # the untouched starting model
  stage1: object  # trainer config (model.init filled in by `run`)
  finetunes: list[tuple[str, object]]  # (ingredient name, trainer config)


def plan(config, workdir: str) -> Plan:
  """Builds the demo corpus and the dev links if missing; resolves every stage's config."""
  from gembed.data.demo import build_demo_corpus
  from gembed.evaluation import suite
  from gembed.formats.modeldir import resolve_model_arg

  work = checkpoint.absolute(workdir)
  os.makedirs(work, exist_ok=True)
  data_dir = os.path.abspath(config.data_dir)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"data_dir {data_dir}: not found (the layout of shared/data)")
  demo = os.path.join(work, "demo-data")
  if not os.path.exists(os.path.join(demo, "manifest.json")):
    log.info("recipe: building the demo corpus")
    build_demo_corpus(demo)
  paths = {"data": data_dir, "demo": os.path.join(demo, "train"),
           "mined": os.path.join(work, "mined")}
  dev_sources = {}
  for name in config.eval.dev_tasks:  # the demo corpus's own dev sets, else data_dir's
    in_demo = os.path.join(demo, "dev", name)
    dev_sources[name] = in_demo if os.path.exists(in_demo) else os.path.join(data_dir, name)
  dev_dir = link_dev_sets(os.path.join(work, "dev"), dev_sources)
  held_out = suite.select(suite.discover(data_dir, split="test"), list(config.eval.tasks))

  stage1 = resolve_stage(config.stage1, paths, **{"model.init": resolve_model_arg(config.init)})
  tasks = [t.name for t in config.finetune.data.tasks]
  finetunes = []
  for ing in config.ingredients:
    unknown = sorted(set(ing.rates) - set(tasks))
    if unknown:
      raise ValueError(f"ingredient {ing.name}: rates for unknown tasks {unknown} ({tasks})")
    stage = resolve_stage(config.finetune, paths, **dotted(ing.get("overrides", {})), **{
        "model.init": os.path.join(work, "stage1"), "train.seed": ing.seed,
        "eval.data_dir": dev_dir})
    for task in stage.data.tasks:
      task.weight = float(ing.rates.get(task.name, 1.0))
    finetunes.append((ing.name, stage))
  return Plan(work, paths, dev_dir, held_out, stage1.model.init, stage1, finetunes)


def run(config, workdir: str, child_init=None) -> dict:
  """Runs (or resumes) the recipe; returns {model name: held-out results}. Each training stage
  runs in its own process, started with `child_init` (train_stage)."""
  p = plan(config, workdir)
  with open(os.path.join(p.work, "recipe_config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))
  check_held_out([p.stage1] + [s for _, s in p.finetunes], p.held_out)

  models = {"init": p.init}
  stage1 = p.stage1
  if config.head.fit:
    models["head-init"] = fit_head(stage1, config.head, p.init, os.path.join(p.work, "head-init"))
    stage1 = override(stage1, **{"model.init": models["head-init"]})
  models["stage1"] = os.path.join(p.work, "stage1")
  train_stage(stage1, models["stage1"], child_init)
  mine_negatives(stage1, list(config.mine.tasks), config.mine, models["stage1"], p.paths["mined"])
  ingredient_dirs = []
  for name, stage in p.finetunes:
    check_held_out([stage], p.held_out)  # the mined files exist now
    ingredient_dirs.append(os.path.join(p.work, name))
    train_stage(stage, ingredient_dirs[-1], child_init)
    models[name] = best_or_latest(ingredient_dirs[-1])

  score = dev_scorer(p.dev_dir, config.eval.dev_tasks, config.soup.metric, config.eval.batch_size)
  models["soup"] = os.path.join(p.work, "soup")
  soup_record = make_soup([models[n] for n, _ in p.finetunes], models["soup"], score,
                          config.soup.greedy)
  if len(soup_record.get("kept", [])) == 1:  # a one-ingredient soup is that ingredient
    models["soup"] = soup_record["kept"][0]
  all_results = {}
  for name, model in models.items():
    same = next((n for n in all_results if models[n] == model), None)
    all_results[name] = all_results[same] if same else evaluate_model(
        model, p.held_out, config.eval.dims, os.path.join(p.work, "eval", name),
        config.eval.batch_size, config.eval.max_examples)
  print(write_report(p.work, all_results, soup_record))
  return all_results


def best_or_latest(workdir: str) -> str:
  """A training workdir's dev-selected checkpoint when it has one."""
  from gembed.formats import modeldir
  return f"{workdir}@best" if os.path.exists(os.path.join(workdir, modeldir.BEST_FILE)) else workdir


def write_report(work: str, all_results: dict, soup_record: dict | None) -> str:
  """report.md, report.json (type means) and report.png; returns the markdown."""
  markdown = report_markdown(all_results, soup_record)
  with open(os.path.join(work, "report.md"), "w", encoding="utf-8") as f:
    f.write(markdown)
  with open(os.path.join(work, "report.json"), "w", encoding="utf-8") as f:
    json.dump({n: type_means(r) for n, r in all_results.items()}, f, indent=2)
  plot_report(all_results, os.path.join(work, "report.png"))
  return markdown
