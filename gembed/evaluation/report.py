"""`gembed eval`: results.json, results.md and one score-vs-dimension plot per task type."""

from __future__ import annotations

import json
import os
from collections import defaultdict

import jax


def write_results(results: dict, output_dir: str) -> None:
  if jax.process_index() != 0:  # one host writes
    return
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(output_dir, "results.md"), "w", encoding="utf-8") as f:
    f.write(results_markdown(results))
  _plots(results, output_dir)


def results_markdown(results: dict) -> str:
  dims = [str(d) for d in results["dims"]]
  lines = [f"# {results.get('model', '')}", "",
           "| task | type | metric | " + " | ".join(f"@{d}" for d in dims) + " |",
           "|---|---|---|" + "---:|" * len(dims)]
  for name, t in results["tasks"].items():
    scores = " | ".join(f"{t['main_score'][d]:.2f}" for d in dims)
    lines.append(f"| {name} | {t['type']} | {t['main_metric']} | {scores} |")
  for key in ("task_mean", "type_mean"):
    lines.append(f"| **{key}** | | | " + " | ".join(f"{results[key][d]:.2f}" for d in dims) + " |")
  return "\n".join(lines) + "\n"


def _plots(results: dict, output_dir: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  dims = results["dims"]
  by_type = defaultdict(list)
  for name, t in results["tasks"].items():
    by_type[t["type"]].append((name, t))
  for task_type, items in by_type.items():
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, t in items[:12]:
      ax.plot(dims, [t["main_score"][str(d)] for d in dims], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("embedding dimension (MRL prefix)")
    ax.set_ylabel(items[0][1]["main_metric"])
    ax.set_title(task_type)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, f"{task_type}.png"), dpi=100)
    plt.close(fig)
