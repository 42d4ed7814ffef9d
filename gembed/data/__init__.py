"""Input pipelines (SeqIO, tf.data). TensorFlow is imported only inside this package."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) is noise for gembed's users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
