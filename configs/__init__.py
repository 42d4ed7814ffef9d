"""Training configs: ml_collections files, a package so that they import their shared parts as
`from configs import common` (gembed's config loader puts this package's parent on sys.path).

    --config configs/finetune.py:tiny            a variant (the first typed field of parse_arg)
    --config configs/finetune.py:variant=tiny    the same, by name
"""
