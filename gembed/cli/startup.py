"""Quiet start-up, set by the entry points before TensorFlow or JAX is imported.

At default verbosity a command prints its own progress and results, not the start-up lines of
TensorFlow, XLA or absl: their C++ logging reads TF_CPP_MIN_LOG_LEVEL once, when loaded, and
TensorFlow's import writes its oneDNN and CUDA notices to stderr before absl's logging is even
initialised, past any level; so the first import of TensorFlow runs with the process's stderr
(file descriptor 2) sent to /dev/null. Python loggers that only announce backends and plugins
are raised to WARNING or ERROR. With `-v` none of this happens and everything is logged at DEBUG.

Before all that, with GEMBED_TCMALLOC=1 a command run from the shell restarts itself once with
tcmalloc preloaded when the system has it (`apt install libtcmalloc-minimal4`). XLA:CPU
allocates each step's temporaries afresh, as one buffer per execution (7.7 GiB for the recipe's
fine-tune step); glibc's malloc maps and unmaps them, and faults them in again every step.
tcmalloc keeps them, which made the CPU train step 1.17x-1.5x faster (two machines), but with
steps of varying shapes it grows instead of reusing its large free spans (likely fragmentation): the
recipe's fine-tune stage passed 20 GB resident where glibc peaks at 11.5, and was killed. Capping
its heap made that step fail, returning every free span made it no faster than glibc (both
measured, docs/benchmarks.md "Host memory"), so it is opt-in: for runs whose memory has room.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import sys

QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3"}  # TensorFlow's and XLA's C++ logs
QUIET_LOGGERS = {"absl": logging.WARNING, "jax": logging.WARNING, "tensorboardX": logging.WARNING,
                 "jax._src.xla_bridge": logging.ERROR,  # backend probing ("no GPU found")
                 "apache_beam": logging.WARNING}  # runner choice, worker start-up (`--beam`, cache)
SILENT_IMPORTS = ("tensorflow",)


TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # as ctypes.util.find_library names them


def preload_tcmalloc() -> None:
  """With GEMBED_TCMALLOC=1, re-executes this process (same interpreter, arguments and pid) with
  tcmalloc in LD_PRELOAD, unless it is loaded already or absent. Call first thing, from a shell
  entry point only (never inside another program's process)."""
  import ctypes.util

  if os.environ.get("GEMBED_TCMALLOC") != "1" or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
    return
  library = next(filter(None, map(ctypes.util.find_library, TCMALLOC_LIBRARIES)), None)
  if library is None:
    return
  env = dict(os.environ, LD_PRELOAD=":".join(filter(None, (library, os.environ.get("LD_PRELOAD")))),
             # tcmalloc reports every allocation over 1 GiB on stderr by default
             TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=os.environ.get(
                 "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(2**62)))
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def configure(verbose: bool) -> None:
  """Logging for a command; at default verbosity, also the quiet start-up above."""
  logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  if verbose:
    return
  for name, value in QUIET_ENVIRONMENT.items():
    os.environ.setdefault(name, value)
  for name, level in QUIET_LOGGERS.items():
    logging.getLogger(name).setLevel(level)
  if not any(isinstance(f, _SilentImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _SilentImport(SILENT_IMPORTS))


@contextlib.contextmanager
def _stderr_to_devnull():
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


class _SilentImport(importlib.abc.MetaPathFinder):
  """Runs the first import of each named module with stderr sent to /dev/null."""

  def __init__(self, names):
    self.names = set(names)

  def find_spec(self, fullname, path, target=None):
    if fullname not in self.names:
      return None
    self.names.discard(fullname)
    for finder in sys.meta_path:
      spec = None if finder is self else finder.find_spec(fullname, path, target)
      if spec is not None:
        break
    else:
      return None
    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
      exec_module = spec.loader.exec_module

      def silent_exec_module(module):
        with _stderr_to_devnull():
          exec_module(module)
      spec.loader.exec_module = silent_exec_module
    return spec
