"""Cached region proposals: computed once per split, resumed after a failure, recomputed when
stale; carried by the detection transform."""

import logging
import os

import numpy as np
import pytest

from research.data import detection, proposals


def _scene(i: int) -> dict:
  """A 40 x 60 grey image with a coloured rectangle that moves with i, as a detection record."""
  image = np.full((40, 60, 3), 128, np.uint8)
  image[4 + i : 16 + i, 3 + 2 * i : 13 + 2 * i] = (220, 30, 30)
  box = np.array([[3 + 2 * i, 4 + i, 13 + 2 * i, 16 + i]], np.float32)
  return {"image": image, "boxes": box, "labels": np.array([0], np.int32)}


class _Source:
  """A list of records; the second read of record `fail_at` (the first is the cache's
  fingerprint) raises, as a killed or broken run would stop there."""

  def __init__(self, records, fail_at=None):
    self.records, self.fail_at, self.reads = records, fail_at, []

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    if i == self.fail_at and i in self.reads:
      raise RuntimeError(f"record {i} unreadable")
    self.reads.append(i)
    return self.records[i]


def _mtimes(directory):
  files = sorted(f for f in os.listdir(directory) if f != ".lock")  # opened by every ensure()
  return {f: os.stat(os.path.join(directory, f)).st_mtime_ns for f in files}


def test_a_split_is_computed_once_in_shards_and_read_back(tmp_path):
  records = [_scene(i) for i in range(7)]
  directory = str(tmp_path / "proposals")
  cache = proposals.ProposalCache(
    _Source(records), directory, max_proposals=50, shard_size=3, progress=False
  ).ensure()
  assert sorted(os.listdir(directory)) == [
    ".lock",
    "manifest.json",
    "shard-00000.npz",
    "shard-00001.npz",
    "shard-00002.npz",
  ]
  for i, record in enumerate(records):
    expected = proposals.propose(record["image"], "fast", 50)
    np.testing.assert_array_equal(cache[i], expected)
    assert cache[i].dtype == np.float32 and 1 <= len(cache[i]) <= 50
  before = _mtimes(directory)
  source = _Source(records)
  again = proposals.ProposalCache(source, directory, max_proposals=50, shard_size=3)
  again.ensure()
  assert _mtimes(directory) == before  # nothing recomputed
  assert len(source.reads) == 7  # only the fingerprint's reads: each record once
  with_proposals = proposals.WithProposals(source, again)
  np.testing.assert_array_equal(with_proposals[4]["proposals"], cache[4])
  np.testing.assert_array_equal(with_proposals[4]["boxes"], records[4]["boxes"])


def test_a_failed_run_resumes_at_its_first_missing_shard(tmp_path):
  records = [_scene(i) for i in range(6)]
  directory = str(tmp_path / "p")
  cache = proposals.ProposalCache(_Source(records, fail_at=4), directory, shard_size=2)
  with pytest.raises(RuntimeError, match="record 4 unreadable"):
    cache.ensure()
  assert sorted(f for f in os.listdir(directory) if f.startswith("shard")) == [
    "shard-00000.npz",
    "shard-00001.npz",
  ]
  kept = _mtimes(directory)
  source = _Source(records)
  proposals.ProposalCache(source, directory, shard_size=2, progress=False).ensure()
  now = _mtimes(directory)
  assert now["shard-00000.npz"] == kept["shard-00000.npz"]
  assert now["shard-00001.npz"] == kept["shard-00001.npz"]
  assert "shard-00002.npz" in now and not any(f.endswith(".tmp.npz") for f in now)


def test_a_cache_of_other_data_or_settings_is_recomputed(tmp_path, caplog):
  records = [_scene(i) for i in range(4)]
  directory = str(tmp_path / "p")
  proposals.ProposalCache(_Source(records), directory, max_proposals=20, progress=False).ensure()
  changed = [*records[:3], _scene(9)]  # a new version of the data set: its last image differs
  with caplog.at_level(logging.WARNING):
    cache = proposals.ProposalCache(_Source(changed), directory, max_proposals=20, progress=False)
    cache.ensure()
  assert "made for other data or settings (fingerprint differ)" in caplog.text
  np.testing.assert_array_equal(cache[3], proposals.propose(_scene(9)["image"], "fast", 20))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    other = proposals.ProposalCache(_Source(changed), directory, max_proposals=5, progress=False)
    other.ensure()
  assert "max_proposals" in caplog.text and len(other[0]) <= 5


def test_greyscale_and_tiny_images_get_proposals():
  grey = _scene(0)["image"][..., :1]
  assert proposals.propose(grey).shape[1] == 4
  np.testing.assert_array_equal(
    proposals.propose(np.zeros((1, 1, 1), np.uint8)), np.array([[0, 0, 1, 1]], np.float32)
  )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"mode": "slow"}, "mode must be one of"),
    ({"max_proposals": 0}, "max_proposals must be a positive int; received 0"),
    ({"shard_size": 1.5}, "shard_size must be a positive int; received 1.5"),
    ({"workers": 0}, "workers must be a positive int; received 0"),
  ],
)
def test_bad_settings_raise(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    proposals.ProposalCache(_Source([_scene(0)]), str(tmp_path), **kwargs)


def test_reading_before_computing_names_the_missing_file(tmp_path):
  cache = proposals.ProposalCache(_Source([_scene(0)]), str(tmp_path / "p"))
  with pytest.raises(FileNotFoundError, match="shard-00000.npz is missing; call ensure"):
    cache[0]
  with pytest.raises(IndexError, match="index 3 out of range for 1 records"):
    cache[3]


def test_transform_scales_clips_pads_and_flips_proposals():
  record = _scene(0)
  record["proposals"] = np.array(
    [[3, 4, 13, 16], [-10, -5, 70, 50], [61, 0, 80, 10], [0, 0, 60, 40]], np.float32
  )
  out = detection.DetectionTransform(size=30, max_boxes=2, max_proposals=6)(record)
  # 60 x 40 -> 30 x 20: every coordinate halves; [-10..70] clips to the image; the box
  # right of the image has no area left and is dropped.
  np.testing.assert_allclose(
    out["proposals"][:3], [[1.5, 2, 6.5, 8], [0, 0, 30, 20], [0, 0, 30, 20]]
  )
  np.testing.assert_array_equal(out["proposal_valid"], [True] * 3 + [False] * 3)
  np.testing.assert_array_equal(out["proposals"][3:], 0)
  flipped = detection.RandomDetectionTransform(
    size=30, max_boxes=2, max_proposals=6, flip_probability=1.0
  )(record, np.random.default_rng(0))
  np.testing.assert_allclose(flipped["proposals"][0], [30 - 6.5, 2, 30 - 1.5, 8])
  np.testing.assert_allclose(flipped["boxes"][0], flipped["proposals"][0])
  few = detection.DetectionTransform(size=30, max_boxes=2, max_proposals=1)(record)
  assert few["proposals"].shape == (1, 4) and few["proposal_valid"].tolist() == [True]


def test_bad_proposals_raise_naming_the_key():
  record = _scene(0)
  record["proposals"] = np.array([[0, 0, np.nan, 5]], np.float32)
  with pytest.raises(ValueError, match="'proposals' must be finite float \\[P, 4\\].*NaN or inf"):
    detection.DetectionTransform(size=30, max_boxes=2)(record)
  record["proposals"] = np.zeros((3, 5), np.float32)
  with pytest.raises(ValueError, match="received float32 of shape \\(3, 5\\)"):
    detection.DetectionTransform(size=30, max_boxes=2)(record)
  with pytest.raises(ValueError, match="max_proposals=0"):
    detection.DetectionTransform(size=30, max_boxes=2, max_proposals=0)(_scene(0))
