"""A real corpus that exists on every machine: the installed Python standard library's docs.

Pairs come from the docstrings and source of the standard library (and `pydoc_data.topics`):
  docstrings.jsonl  summary line -> "name(signature)" + the rest of the docstring
  code.jsonl        summary line -> the object's source code
  topics.jsonl      a language-reference topic name -> its text
Objects are split into train and held-out parts by a stable hash of their qualified name; the
held-out part is written as a retrieval set in shared/data's layout (dev/retrieval/python-docs),
so the main job trains and evaluates for real with no download.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import hashlib
import importlib
import inspect
import io
import json
import logging
import os
import pkgutil
import sys
import textwrap
import warnings
from collections import Counter

log = logging.getLogger(__name__)

# Modules with import-time side effects or GUI/platform needs.
_SKIP_PREFIXES = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__",
                  "lib2to3", "ensurepip", "venv", "msvc", "winreg", "winsound", "_", "test",
                  "pydoc_data", "xxsubtype", "sre_", "crypt", "nntplib", "telnetlib", "cgi")
MIN_DOC_CHARS = 40
MAX_CHARS = 1500


# Installed with gembed on every machine: rich, real docstrings beyond the standard library.
DEPENDENCY_PACKAGES = ("numpy", "scipy", "sklearn", "optax")


def _import_quietly(name):
  try:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
        contextlib.redirect_stderr(io.StringIO()):
      warnings.simplefilter("ignore")
      return importlib.import_module(name)
  except Exception:  # platform-specific or optional modules
    return None


def _module_names():
  for name in sorted(sys.stdlib_module_names):
    if not name.startswith(_SKIP_PREFIXES):
      yield name
  yield from DEPENDENCY_PACKAGES


def _modules():
  """Top-level modules and, for packages, their public submodules (no tests)."""
  seen = set()
  for name in _module_names():
    module = _import_quietly(name)
    if module is None:
      continue
    names = [name]
    if hasattr(module, "__path__"):
      names += sorted(info.name for info in pkgutil.walk_packages(module.__path__, name + ".")
                      if not any(part.startswith(("_", "test")) for part in info.name.split(".")[1:]))
    for sub in names:
      if sub in seen:
        continue
      seen.add(sub)
      sub_module = module if sub == name else _import_quietly(sub)
      if sub_module is not None:
        yield sub, sub_module


def _strip_docstring(source: str) -> str:
  """Source without the object's own docstring (else the query would appear verbatim)."""
  try:
    tree = ast.parse(textwrap.dedent(source))
  except SyntaxError:
    return source
  node = tree.body[0] if tree.body else None
  if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body
      and isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant)
      and isinstance(node.body[0].value.value, str)):
    node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)
  return source


def _objects(module_name, module):
  """Public functions, classes and methods defined in the module, with their docstrings."""
  for name, obj in sorted(vars(module).items()):
    if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
      continue
    if inspect.isfunction(obj) or inspect.isclass(obj):
      yield f"{module_name}.{name}", obj
      if inspect.isclass(obj):
        for attr, member in sorted(vars(obj).items()):
          if not attr.startswith("_") and inspect.isfunction(member):
            yield f"{module_name}.{name}.{attr}", member


def _split_doc(doc: str):
  lines = inspect.cleandoc(doc).splitlines()
  summary = lines[0].strip() if lines else ""
  return summary, "\n".join(lines[1:]).strip()


def _signature(obj) -> str:
  try:
    return str(inspect.signature(obj))
  except (TypeError, ValueError):
    return ""


def _held_out(key: str, fraction: float) -> bool:
  return int(hashlib.md5(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def collect_pairs() -> dict[str, list[dict]]:
  docs, code = [], []
  for module_name, module in _modules():
    for qualname, obj in _objects(module_name, module):
      doc = inspect.getdoc(obj) if obj.__doc__ else None
      if not doc:
        continue
      summary, body = _split_doc(doc)
      if len(summary) < 15 or len(body) < MIN_DOC_CHARS:
        continue
      docs.append({"query": summary, "positive": f"{qualname}{_signature(obj)}\n{body}"[:MAX_CHARS],
                   "positive_id": qualname, "key": qualname})
      try:
        source = inspect.getsource(obj)
      except (OSError, TypeError):
        continue
      code.append({"query": summary, "positive": _strip_docstring(source)[:MAX_CHARS], "positive_id": qualname + ":src",
                   "key": qualname})
  # A summary shared by several objects ("Return self==value.") is ambiguous as a query.
  counts = Counter(r["query"] for r in docs)
  docs = [r for r in docs if counts[r["query"]] == 1]
  code = [r for r in code if counts[r["query"]] == 1]
  from pydoc_data import topics
  topic_rows = [{"query": name.replace("-", " "), "positive": text.strip()[:MAX_CHARS],
                 "key": f"topic:{name}"} for name, text in sorted(topics.topics.items())
                if len(text) > MIN_DOC_CHARS]
  return {"docstrings": docs, "code": code, "topics": topic_rows}


def build_demo_corpus(out_dir: str, held_out_fraction: float = 0.1) -> dict:
  """Writes train/*.jsonl and dev/retrieval/python-docs; returns counts. Idempotent."""
  manifest = os.path.join(out_dir, "manifest.json")
  if os.path.exists(manifest):
    with open(manifest, encoding="utf-8") as f:
      return json.load(f)
  pairs = collect_pairs()
  train_dir = os.path.join(out_dir, "train")
  dev_dir = os.path.join(out_dir, "dev", "retrieval", "python-docs")
  os.makedirs(train_dir, exist_ok=True)
  os.makedirs(dev_dir, exist_ok=True)
  counts = {}
  for name, rows in pairs.items():
    train = [r for r in rows if not _held_out(r["key"], held_out_fraction)]
    with open(os.path.join(train_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
      for r in train:
        f.write(json.dumps({k: v for k, v in r.items() if k != "key"}) + "\n")
    counts[f"train/{name}"] = len(train)
  held = [r for r in pairs["docstrings"] if _held_out(r["key"], held_out_fraction)]
  with open(os.path.join(dev_dir, "corpus.jsonl"), "w", encoding="utf-8") as f:
    for r in held:
      f.write(json.dumps({"_id": r["key"], "title": "", "text": r["positive"]}) + "\n")
  with open(os.path.join(dev_dir, "queries.jsonl"), "w", encoding="utf-8") as f:
    for i, r in enumerate(held):
      f.write(json.dumps({"_id": f"q{i}", "text": r["query"]}) + "\n")
  with open(os.path.join(dev_dir, "qrels.tsv"), "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(["query-id", "corpus-id", "score"])
    for i, r in enumerate(held):
      writer.writerow([f"q{i}", r["key"], 1])
  counts["dev/retrieval/python-docs"] = len(held)
  with open(manifest, "w", encoding="utf-8") as f:
    json.dump(counts, f, indent=2)
  log.info("demo corpus in %s: %s", out_dir, counts)
  return counts
