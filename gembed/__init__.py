"""gembed: train text embedding models with the Gemini Embedding recipe on JAX/Flax."""

__version__ = "0.1.0"
