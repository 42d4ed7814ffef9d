"""`gembed bench stream`: peak resident memory of a short real training run over N generated
JSONL rows, for each N: flat when the JSONL source streams its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# Fixed words: the sentences are random but every N draws them alike.
WORDS = ("the a river city music early light winter garden report market history small large "
         "quiet people season doctor library morning answer question system mountain paper "
         "network station window travel energy family forest ocean simple public private "
         "research language student teacher village bridge summer").split()
WORDS_PER_SENTENCE = 16  # ~100 characters
TASK_FILES = ("snli-triples.jsonl", "xnli-triples.jsonl")  # the tasks of configs/finetune.py


def write_rows(path: str, n: int, seed: int, chunk: int = 10_000) -> None:
  """n (query, positive, negative) rows of random ~100-character sentences, written a chunk at
  a time (the writer's memory does not grow with n)."""
  rng = np.random.default_rng(seed)
  words = np.asarray(WORDS)
  with open(path, "w", encoding="utf-8") as f:
    for start in range(0, n, chunk):
      drawn = words[rng.integers(len(words), size=(min(chunk, n - start), 3, WORDS_PER_SENTENCE))]
      f.writelines(json.dumps(dict(zip(("query", "positive", "negative"),
                                       (" ".join(s) for s in row)))) + "\n" for row in drawn)


def train_peak(args, data_dir: str, workdir: str) -> tuple[int, float]:
  """(peak resident bytes, seconds) of `python -m gembed.main` on `data_dir`: the kernel's
  high-water mark of that one child (`wait4`), not of this process or earlier children."""
  command = [sys.executable, "-m", "gembed.main", "--config", args.config, "--workdir", workdir,
             f"--config.data.dir={data_dir}", f"--config.train.steps={args.steps}",
             f"--config.ckpt.every={args.steps}",
             # Every run compiles: a cache hit would spare one run the compiler's memory.
             "--config.train.compilation_cache=off"]
  if args.model:
    command.append(f"--config.model.init={args.model}")
  start = time.perf_counter()
  with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True) as child:
    errors = child.stderr.read()  # until it exits: a full pipe would stall it
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
  seconds = time.perf_counter() - start
  if child.returncode:
    raise RuntimeError(f"training over {data_dir} failed:\n{errors[-3000:]}")
  return usage.ru_maxrss * 1024, seconds  # Linux reports KiB


def run(args) -> dict:
  """Peak resident memory of the same short run over each of `args.rows` rows (split over the
  config's two task files), and the ratio of the last to the first."""
  result = {"config": args.config, "steps": args.steps, "runs": {}}
  if args.tmp:
    os.makedirs(args.tmp, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
    for n in args.rows:
      data_dir = os.path.join(tmp, f"data-{n}")
      os.makedirs(data_dir)
      for i, name in enumerate(TASK_FILES):
        write_rows(os.path.join(data_dir, name), n // len(TASK_FILES) + (i < n % len(TASK_FILES)),
                   seed=i)
      peak, seconds = train_peak(args, data_dir, os.path.join(tmp, f"work-{n}"))
      result["runs"][n] = {"peak_rss_mib": peak / 2 ** 20, "seconds": seconds}
      print(f"{n} rows: peak RSS {peak / 2 ** 20:.0f} MiB ({seconds:.0f} s)", flush=True)
      for name in TASK_FILES:  # the next N's files need the disk
        os.remove(os.path.join(data_dir, name))
  first, last = (result["runs"][n]["peak_rss_mib"] for n in (args.rows[0], args.rows[-1]))
  result["ratio"] = last / first
  return result
