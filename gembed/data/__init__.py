"""Input pipelines (SeqIO, tf.data). TensorFlow is imported only inside this package."""
