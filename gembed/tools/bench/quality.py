"""`gembed bench quality`: the recipe and its sentence-transformers peer side by side.

    gembed bench quality --config configs/recipe.py --workdir runs/quality [--config.a.b=v ...]

Runs (or resumes) `gembed recipe` in the workdir, trains the peer (gembed/peer.py) from the same
init on the same rows, budget (stage 1 + one fine-tuning stage, as each recipe ingredient gets),
head width and MRL dims, then scores it with gembed's evaluator on the recipe's held-out sets.
Prints type means at every dimension for the init, the peer and each gembed stage, and writes
WORKDIR/quality.md. Needs the `test` extra (PyTorch, sentence-transformers).
"""

from __future__ import annotations

import json
import logging
import os
import time

from gembed import recipe

log = logging.getLogger(__name__)


def quality_table(all_results: dict[str, dict], peer_seconds: float | None) -> str:
  names = list(all_results)
  dims = [str(d) for d in all_results[names[0]]["dims"]]
  peer = all_results.get("peer", {}).get("type_mean")
  lines = ["# Quality: gembed's recipe vs the sentence-transformers peer", "",
           "Held-out type means (" + ", ".join(all_results[names[0]]["tasks"]) + ")", "",
           "| model | " + " | ".join(f"@{d}" for d in dims) + " | vs peer @" + dims[0]
           + " | vs peer @" + dims[-1] + " |", "|---|" + "---:|" * (len(dims) + 2)]
  for n in names:
    means = all_results[n]["type_mean"]
    cells = [f"{means[d]:.2f}" for d in dims]
    versus = [f"{means[d] - peer[d]:+.2f}" if peer and n != "peer" else "" for d in (dims[0], dims[-1])]
    lines.append(f"| {n} | " + " | ".join(cells + versus) + " |")
  if peer_seconds is not None:
    lines += ["", f"Peer training: {peer_seconds / 60:.1f} min."]
  return "\n".join(lines) + "\n"


def run(config, workdir: str, child_init=None) -> dict:
  """The recipe (`recipe.run`), then the peer: trained in its own process, then evaluated."""
  from gembed.peer import train_peer

  gembed_results = recipe.run(config, workdir, child_init)
  p = recipe.plan(config, workdir)
  peer_dir = os.path.join(p.work, "peer")
  timing_file = os.path.join(p.work, "peer_seconds.json")
  if not os.path.exists(os.path.join(peer_dir, "modules.json")):
    start = time.perf_counter()
    recipe.in_child(child_init, train_peer, p.init, [p.stage1, p.finetunes[0][1]],
                    tuple(p.stage1.loss.mrl_dims), peer_dir, learning_rate=config.peer.learning_rate,
                    max_length=config.peer.max_length, seed=config.peer.seed)
    with open(timing_file, "w", encoding="utf-8") as f:
      json.dump(time.perf_counter() - start, f)
  peer_seconds = json.load(open(timing_file, encoding="utf-8")) if os.path.exists(timing_file) else None
  peer = recipe.evaluate_model(peer_dir, p.held_out, config.eval.dims,
                               os.path.join(p.work, "eval", "peer"), config.eval.batch_size,
                               config.eval.max_examples)
  all_results = {"init": gembed_results["init"], "peer": peer,
                 **{n: r for n, r in gembed_results.items() if n != "init"}}
  table = quality_table(all_results, peer_seconds)
  with open(os.path.join(p.work, "quality.md"), "w", encoding="utf-8") as f:
    f.write(table)
  print(table)
  return all_results
