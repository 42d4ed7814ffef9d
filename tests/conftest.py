"""Test setup: 8 simulated CPU devices (set before JAX starts), shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for the session and its subprocesses (trainer runs):
# the tiny models' steps compile once, not once per test.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pathlib
import sys

import pytest

# The repository root, so tests import the `configs` package as config files do.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(relative: str) -> pathlib.Path:
  """A path under ../shared/data; skips the test, saying so, when that folder is absent."""
  path = SHARED_DATA / relative
  if not path.exists():
    pytest.skip(f"shared benchmark data not found at {path} (it exists beside the checkout and "
                "in CI, not on user machines)")
  return path


@pytest.fixture(scope="session")
def minilm_dir() -> str:
  from gembed.formats.modeldir import default_model_dir
  return default_model_dir()


@pytest.fixture(scope="session")
def minilm(minilm_dir):
  """(ModelInfo, params) of the real all-MiniLM-L6-v2 checkpoint."""
  from gembed.formats.modeldir import load_model
  return load_model(minilm_dir)
