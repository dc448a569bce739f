"""The grain input pipeline: source -> shuffle(seed) -> batch -> shard -> map.

Training: every process shuffles the same global stream of records, cuts it
into blocks of `global_batch // process_count`, and reads only its own block
of each global batch. Random augmentation of a record is seeded by
(seed, the record's position in the stream). So the data a step sees depends
on the seed and the global batch size only, never on how many processes or
devices share it: one process and a pod train on the same batches.
Evaluation: each process reads records i with i % process_count == process_index.
The training iterator's state is a small JSON-able dict, saved with every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
      f"batch_size: expected a multiple of the process count {n}; received {global_batch_size}."
    )
  return global_batch_size // n


def _shard(source) -> grain.MapDataset:
  ds = grain.MapDataset.source(source)
  return ds[jax.process_index() :: jax.process_count()]


def train_iterator(
  source,
  *,
  global_batch_size: int,
  seed: int,
  transform: Callable[[dict], dict],
  random_transform: Callable[[dict, list[np.random.Generator]], dict] | None = None,
  record_transform: Callable[[dict, np.random.Generator], dict] | None = None,
) -> grain.DatasetIterator:
  """An endless iterator of this process's part of each global batch, reshuffled every epoch.

  `record_transform(record, rng)` first crops each record to a fixed size (for
  photographs of varying size); `transform(batch)` then acts on a whole batch,
  and `random_transform(batch, rngs)` gets one numpy Generator per record. Each
  record's generators are seeded by the seed and its position in the stream.
  Returns batches {"image": [B, H, W, C], "label": [B]} with B the local batch
  size; `get_state()`/`set_state()` save and restore its position.
  """
  local = local_batch_size(global_batch_size)
  n, p = jax.process_count(), jax.process_index()
  if len(source) < global_batch_size:
    raise ValueError(
      f"batch_size: expected at most the {len(source)} records of the data set; received "
      f"{global_batch_size}."
    )
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  if record_transform is not None:
    # Lazy: a process crops only the records of its own blocks.
    ds = ds.map_with_index(lambda i, r: record_transform(r, np.random.default_rng((seed, i, 1))))
  # Block k of the stream holds records [k * local, (k + 1) * local); this process's
  # blocks are p, p + n, p + 2n, ...
  ds = ds.batch(local, drop_remainder=True)[p::n].map(transform)
  if random_transform is not None:

    def augment(k, batch):
      first = (k * n + p) * local
      rngs = [np.random.default_rng((seed, first + i)) for i in range(local)]
      return random_transform(batch, rngs)

    ds = ds.map_with_index(augment)
  return iter(ds.to_iter_dataset())


def eval_batches(
  source,
  *,
  global_batch_size: int,
  transform: Callable[[dict], dict],
  record_transform: Callable[[dict], dict] | None = None,
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
    if record_transform is not None:
      records = [record_transform(r) for r in records]
    out = transform({k: np.stack([r[k] for r in records]) for k in records[0]})
    if "mask" in out:
      # Records may carry a pixel "mask" (digit_scenes); overwriting it would go unnoticed.
      raise ValueError(
        "transform: its output has a 'mask' key, but eval_batches puts the [B] validity mask "
        "there; drop or rename the records' 'mask' in the transform."
      )
    out["mask"] = np.arange(start, start + batch) < len(ds)
    yield out
