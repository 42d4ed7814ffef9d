"""Model directories on disk: Hugging Face (hf), sentence-transformers, and gembed's own
self-describing model directory (modeldir)."""
