"""The grain input pipeline: source -> shard -> shuffle(seed) -> batch -> map.

Each process reads its own shard of the source (records i with
i % process_count == process_index) and batches `global_batch // process_count`
of them, so that the processes together form one global batch. The iterator's
state is a small JSON-able dict, saved with every checkpoint.
"""

from __future__ import annotations

from typing import Callable, Iterator

import grain
import jax
import numpy as np


def local_batch_size(global_batch_size: int) -> int:
  """The share of `global_batch_size` that this process loads."""
  n = jax.process_count()
  if global_batch_size < 1:
    raise ValueError(f"batch_size: expected a positive integer; received {global_batch_size}.")
  if global_batch_size % n:
    raise ValueError(
        f"batch_size: expected a multiple of the process count {n}; received {global_batch_size}.")
  return global_batch_size // n


def _shard(source) -> grain.MapDataset:
  ds = grain.MapDataset.source(source)
  return ds[jax.process_index()::jax.process_count()]


def train_iterator(
    source,
    *,
    global_batch_size: int,
    seed: int,
    transform: Callable[[dict], dict],
    random_transform: Callable[[dict, np.random.Generator], dict] | None = None,
) -> grain.DatasetIterator:
  """An endless iterator of training batches, reshuffled every epoch.

  `transform(batch)` and `random_transform(batch, rng)` act on whole batches.
  Returns batches {"image": [B, H, W, C], "label": [B]} with B the local batch
  size; `get_state()`/`set_state()` save and restore its position.
  """
  batch = local_batch_size(global_batch_size)
  ds = _shard(source)
  if len(ds) < batch:
    raise ValueError(
        f"batch_size: this process's shard has {len(ds)} records, fewer than its batch of "
        f"{batch}.")
  ds = ds.seed(seed).shuffle().repeat(None).batch(batch, drop_remainder=True).map(transform)
  if random_transform is not None:
    ds = ds.random_map(random_transform)
  return iter(ds.to_iter_dataset())


def eval_batches(
    source, *, global_batch_size: int, transform: Callable[[dict], dict]
) -> Iterator[dict]:
  """One pass over this process's shard in order, the last batch padded.

  Yields {"image": [B, ...], "label": [B], "mask": [B] bool}; padded rows have
  mask False and repeat the last record so their values are valid inputs.
  Every process yields the same number of batches (multi-host steps need it).
  """
  batch = local_batch_size(global_batch_size)
  ds = _shard(source)
  # Shards differ in length by at most one record; all take the longest's count.
  longest = -(-len(source) // jax.process_count())
  for start in range(0, longest, batch):
    # Indices past this shard's end repeat its last record and are masked out.
    idx = np.minimum(np.arange(start, start + batch), len(ds) - 1)
    records = [ds[int(i)] for i in idx]
    out = transform({k: np.stack([r[k] for r in records]) for k in records[0]})
    out["mask"] = np.arange(start, start + batch) < len(ds)
    yield out
