"""Benchmarks against the peer (sentence-transformers on PyTorch) in the same run, one module
each; their command line is gembed.cli.bench.

    gembed bench encode [--texts FILE] [--n 2048] [--batch-size 64] [--max-length 128]
    gembed bench train  [--triples FILE] [--batch-size 64] [--max-length 128] [--steps 6]
    gembed bench data   [--triples FILE] [--batch-size 64] [--max-length 128] [--batches 40]
    gembed bench memory [--batches 256 1024 4096] [--chunk 32] [--run-batch 1024]
    gembed bench mine   [--pairs FILE] [--top-k 30] [--margin-ratio 0.95]   (peer: + `datasets`)

`train --no-peer` needs neither torch nor TensorFlow (an accelerator image with JAX only).

Each prints both sides, their ratio and medians over repeats (these machines are noisy).
The peer needs the `test` extra (torch + sentence-transformers).
"""
