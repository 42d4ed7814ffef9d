"""The import rule (docs/architecture.md, "Layers"): every module's imports, including those
inside functions, parsed with `ast`; no cycle, no upward import, no library module importing
the command line. The layer table is read from the docs, so the docs and the code cannot drift."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "architecture.md")


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every module under gembed/."""
  out = {}
  for folder, _, files in os.walk(os.path.join(ROOT, "gembed")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


MODULES = _modules()


def _imports(module: str) -> set[str]:
  """The gembed modules `module` imports anywhere in its body (a `from P import x` of a
  submodule x counts as an import of P.x, and of P)."""
  tree = ast.parse(open(MODULES[module], encoding="utf-8").read())
  package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from .x import y
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      for alias in node.names:
        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
  found = {name for name in found if name in MODULES}
  # Importing P.x runs package P's __init__ first: an import of P.x is an import of P too.
  found |= {ancestor for name in found for ancestor in _ancestors(name) if ancestor in MODULES}
  return found - {module}


def _ancestors(name: str) -> list[str]:
  parts = name.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


GRAPH = {module: _imports(module) for module in MODULES}


def _layers() -> list[tuple[str, list[str], set[str]]]:
  """(layer, module patterns, layers it may not import), top layer first, from the docs."""
  text = open(DOCS, encoding="utf-8").read()
  block = re.search(r"read by tests/test_imports\.py.*?```text\n(.*?)```", text, re.S)
  assert block, f"{DOCS}: no layer table"
  layers = []
  for line in block.group(1).strip().splitlines():
    line, _, banned = line.partition("not:")
    name, *patterns = line.split()
    layers.append((name, patterns, set(banned.split())))
  return layers


LAYERS = _layers()


def _layer_of(module: str) -> int:
  """Index in LAYERS (0 = top); `P.*` covers package P and its submodules, a plain name only
  itself; the longest matching pattern wins."""
  best, best_length = None, -1
  for index, (_, patterns, _) in enumerate(LAYERS):
    for pattern in patterns:
      prefix = pattern.removesuffix(".*")
      matches = module == prefix or (pattern.endswith(".*") and module.startswith(prefix + "."))
      if matches and len(prefix) > best_length:
        best, best_length = index, len(prefix)
  return best


def test_every_module_has_a_layer():
  missing = sorted(m for m in MODULES if _layer_of(m) is None)
  assert not missing, f"modules missing from the layer table in {DOCS}: {missing}"


def test_no_import_cycle():
  state, stack, cycles = {}, [], []

  def visit(module):
    state[module] = "open"
    stack.append(module)
    for target in sorted(GRAPH[module]):
      if state.get(target) == "open":
        cycles.append(stack[stack.index(target):] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[module] = "done"

  for module in sorted(MODULES):
    if module not in state:
      visit(module)
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_upward_or_forbidden_import():
  names = [name for name, _, _ in LAYERS]
  bad = []
  for module, targets in GRAPH.items():
    here = _layer_of(module)
    for target in targets:
      there = _layer_of(target)
      if there < here:
        bad.append(f"{module} ({names[here]}) imports {target} ({names[there]}), a layer above")
      elif names[there] in LAYERS[here][2]:
        bad.append(f"{module} ({names[here]}) imports {target}: {names[here]} may not import "
                   f"{names[there]}")
  assert not bad, "\n".join(sorted(bad))


def test_no_library_module_imports_the_command_line():
  def cli(m):
    return m == "gembed.cli" or m.startswith("gembed.cli.")
  library = [m for m in GRAPH if not cli(m) and m != "gembed.main"]
  bad = sorted(m for m in library if any(cli(t) for t in GRAPH[m]))
  assert not bad, f"library modules importing gembed.cli: {bad}"
