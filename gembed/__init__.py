"""gembed: train text embedding models with the Gemini Embedding recipe on JAX/Flax."""

import os

# TensorFlow (data pipelines, TensorBoard) prints C++ start-up chatter unless told not to.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
