"""Splitting a global batch into chunks that every device shares (GradCache, chunked losses)."""

from __future__ import annotations

import jax.numpy as jnp


def to_chunks(x, chunk_size: int):
  """(R, ...) -> (R // chunk_size, chunk_size, ...), chunk j holding rows j, j + n, j + 2n, ...

  Strided rather than contiguous: with rows sharded contiguously over the data axis, every chunk
  then holds an equal share of every device's rows, so all devices work on every chunk.
  """
  rows = x.shape[0]
  if rows % chunk_size:
    raise ValueError(f"{rows} rows do not split into chunks of {chunk_size}")
  return jnp.swapaxes(x.reshape((chunk_size, rows // chunk_size) + x.shape[1:]), 0, 1)


def rows_within_tokens(batch_rows: int, tokens_per_row: int, token_budget: int,
                       multiple: int) -> int:
  """The most rows per chunk that split `batch_rows` evenly, are a multiple of `multiple` (the
  devices the rows are sharded over) and hold at most `token_budget` tokens; `multiple` when
  even that many rows exceed the budget."""
  fitting = [rows for rows in range(multiple, batch_rows + 1, multiple)
             if batch_rows % rows == 0 and rows * tokens_per_row <= token_budget]
  return max(fitting, default=multiple)


def from_chunks(y):
  """Inverse of `to_chunks`."""
  return jnp.swapaxes(y, 0, 1).reshape((-1,) + y.shape[2:])
