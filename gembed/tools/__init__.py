"""Tools beside training: the ahead-of-time memory check (aot) and the benchmarks (bench)."""
