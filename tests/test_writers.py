"""Metrics go to TensorBoard, and to a tracker (wandb / trackio API) only when one is named."""

import os
import sys
import types

import ml_collections
import pytest

from gembed.writers import MetricWriter


def _config(tracker=""):
  return ml_collections.ConfigDict({"train": {"tracker": tracker, "tracker_project": "p"}})


def test_tensorboard_always_a_tracker_only_when_named(tmp_path, monkeypatch):
  calls = []
  fake = types.ModuleType("wandb")
  fake.init = lambda **kw: calls.append(("init", kw))
  fake.log = lambda values, step: calls.append(("log", values, step))
  fake.finish = lambda: calls.append(("finish",))
  monkeypatch.setitem(sys.modules, "wandb", fake)

  plain = MetricWriter(str(tmp_path / "a"), _config())
  plain.scalars(1, {"train/loss@16": 0.5})
  plain.close()
  assert calls == [] and os.listdir(tmp_path / "a" / "tensorboard")

  tracked = MetricWriter(str(tmp_path / "run-b"), _config("wandb"))
  tracked.scalars(3, {"train/loss@16": 0.25})
  tracked.close()
  assert calls[0][0] == "init" and calls[0][1]["project"] == "p" and calls[0][1]["name"] == "run-b"
  assert calls[1:] == [("log", {"train/loss@16": 0.25}, 3), ("finish",)]
  assert os.listdir(tmp_path / "run-b" / "tensorboard")

  with pytest.raises(ValueError, match="train.tracker 'mlflow'"):
    MetricWriter(str(tmp_path / "c"), _config("mlflow"))
