"""Model soups (method.md section 3): averages of parameter pytrees of fine-tuned models.

The averaging functions are pure and run on whatever arrays they are given: host numpy arrays, or
sharded `jax.Array`s, whose shardings `jax.tree.map` keeps (each device averages its own shards).
Sums are taken in float32 whatever the parameters' dtype, and cast back at the end.

`make_soup` is what `gembed soup` runs: load the ingredients, check that they are the same model,
average (uniform, weighted, or greedy by dev score) and write a self-describing model directory
with `soup.json`, the log of ingredients, weights and dev scores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

SOUP_LOG = "soup.json"


class SoupError(ValueError):
  """Ingredients that cannot be averaged; the message names the first difference."""


def _shape_tree(params) -> dict:
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def check_same_structure(trees: Sequence, names: Sequence[str]) -> None:
  """Raises SoupError naming the first parameter path whose presence or shape differs."""
  reference = _shape_tree(trees[0])
  for tree, name in zip(trees[1:], names[1:]):
    other = _shape_tree(tree)
    for path in sorted(set(reference) | set(other)):
      if reference.get(path) != other.get(path):
        mine = reference.get(path, "missing")
        theirs = other.get(path, "missing")
        raise SoupError(f"parameter {path}: {names[0]} has shape {mine}, {name} has {theirs}")


def normalized_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
  """Weights that sum to 1 (uniform when None); negative or all-zero weights are refused."""
  if weights is None:
    return np.full(count, 1.0 / count)
  w = np.asarray(weights, np.float64)
  if w.shape != (count,):
    raise SoupError(f"{len(w)} weights for {count} models")
  if (w < 0).any() or w.sum() <= 0:
    raise SoupError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
  return w / w.sum()


def weighted_average(trees: Sequence, weights: Sequence[float] | None = None):
  """sum_i w_i * tree_i with weights normalised to 1, accumulated in float32."""
  w = normalized_weights(weights, len(trees))

  def average(*leaves):
    total = sum(float(wi) * jnp.asarray(leaf, jnp.float32) for wi, leaf in zip(w, leaves))
    return total.astype(jnp.result_type(leaves[0]))

  return jax.tree.map(average, *trees)


def uniform_average(trees: Sequence):
  return weighted_average(trees, None)


@dataclasses.dataclass
class GreedyStep:
  """One candidate of a greedy soup, in the order tried."""

  name: str
  own_score: float  # the candidate alone
  soup_score: float  # the soup with the candidate added (first candidate: itself)
  kept: bool


def greedy_soup(candidates: Sequence[tuple[str, Callable[[], dict]]],
                score: Callable[[dict], float]) -> tuple[dict, list[GreedyStep]]:
  """Greedy soup (Wortsman et al. 2022): candidates sorted by their own dev score, best first;
  each is added to the uniform soup of those kept so far if the soup's score does not drop.

  `candidates` are (name, load) pairs so that only the running float32 sum and one candidate are
  in memory at once; `score(params)` is the dev score (higher is better).
  """
  own = []
  for name, load in candidates:
    own.append((score(load()), name, load))
    log.info("candidate %s: dev %.4f", name, own[-1][0])
  own.sort(key=lambda item: -item[0])

  best_score, first_name, first_load = own[0]
  first = first_load()
  total = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), first)
  dtypes = jax.tree.map(jnp.result_type, first)
  kept = 1
  steps = [GreedyStep(first_name, best_score, best_score, True)]
  for own_score, name, load in own[1:]:
    trial_total = jax.tree.map(lambda s, x: s + jnp.asarray(x, jnp.float32), total, load())
    trial_score = score(jax.tree.map(lambda s: s / (kept + 1), trial_total))
    keep = trial_score >= best_score
    log.info("greedy: %s soup dev %.4f vs %.4f -> %s", name, trial_score, best_score,
             "kept" if keep else "dropped")
    steps.append(GreedyStep(name, own_score, trial_score, keep))
    if keep:
      total, kept, best_score = trial_total, kept + 1, trial_score
  soup = jax.tree.map(lambda s, d: (s / kept).astype(d), total, dtypes)
  return soup, steps


def _check_same_model(infos: Sequence, names: Sequence[str]) -> None:
  from gembed.models.config import ModelConfig
  reference = infos[0].config.to_dict()
  for info, name in zip(infos[1:], names[1:]):
    other = info.config.to_dict()
    for field in (f.name for f in dataclasses.fields(ModelConfig)):
      if field in ("dropout_rate", "remat", "compute_dtype"):  # training-time settings
        continue
      if reference[field] != other[field]:
        raise SoupError(f"model config {field}: {names[0]} has {reference[field]!r}, "
                        f"{name} has {other[field]!r}")
  tokenizers = {open(i.tokenizer_file, "rb").read() for i in infos}
  if len(tokenizers) > 1:
    raise SoupError(f"{', '.join(names)}: the models use different tokenizer.json files")


def make_soup(models: Sequence[str], output: str, weights: Sequence[float] | None = None,
              greedy: bool = False, dev_score: Callable[..., float] | None = None) -> dict:
  """Writes a soup of `models` (any --model specs) to `output`; returns the soup log.

  With `greedy`, `dev_score(info, params)` scores each candidate and each trial soup.
  """
  from gembed import checkpoint
  from gembed.formats import modeldir

  if len(set(models)) != len(models):
    raise SoupError(f"a model is listed twice: {list(models)}")
  infos, loaded = [], {}
  for spec in models:
    info, params = modeldir.load_model(spec)
    infos.append(info)
    loaded[spec] = params
  _check_same_model(infos, models)
  check_same_structure([loaded[m] for m in models], models)
  info = dataclasses.replace(infos[0], source=f"soup of {len(models)} models")

  record: dict = {"models": list(models)}
  if greedy:
    if dev_score is None:
      raise SoupError("a greedy soup needs a dev set to score candidates")
    params, steps = greedy_soup([(m, lambda m=m: loaded[m]) for m in models],
                                lambda p: dev_score(info, p))
    record.update(method="greedy", steps=[dataclasses.asdict(s) for s in steps],
                  kept=[s.name for s in steps if s.kept])
    kept = record["kept"]
    record["weights"] = {m: (1.0 / len(kept) if m in kept else 0.0) for m in models}
  else:
    w = normalized_weights(weights, len(models))
    params = weighted_average([loaded[m] for m in models], w)
    record.update(method="uniform" if weights is None else "weighted",
                  weights={m: float(x) for m, x in zip(models, w)})
    if dev_score is not None:
      record["dev_score"] = dev_score(info, params)
  modeldir.save_model(info, jax.tree.map(np.asarray, params), output)
  from etils import epath
  (epath.Path(checkpoint.absolute(output)) / SOUP_LOG).write_text(json.dumps(record, indent=2))
  return record
