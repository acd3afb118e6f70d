"""Random-access sources of clean examples, and loaders for user data (files, tfds).

Sources only need `__len__` and `__getitem__`, which is what grain's MapDataset reads; all
randomness (shuffling, masking) lives in the pipeline so that a source is a pure function
of the index.

Example formats (one example, no batch dim):
  text:  tokens int32 (L,), segment_ids int32 (L,), positions int32 (L,), word_start bool (L,)
  image: image float32 (H, W, C) in [0, 1], label int32 ()
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
from PIL import Image

from pretrain.data.corpora import split_paragraphs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class PackedTextSource:
  """Rows of `pack_documents` output; row i -> dict of each array's row i."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"arrays disagree on the number of rows: {lengths}")
    self.arrays = arrays
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in self.arrays.items()}


def image_example(image: np.ndarray, label) -> dict[str, np.ndarray]:
  """uint8 (H,W) or (H,W,C) image -> float32 (H,W,C) in [0, 1], plus an int32 label."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, None]
  return {"image": image.astype(np.float32) / 255.0, "label": np.int32(label)}


class ImageSource:
  """In-memory uint8 images and labels; converted to float one example at a time."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return image_example(self.images[i], self.labels[i])


def _matching_files(pattern: str) -> list[str]:
  paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(f"no files match {pattern!r}")
  return paths


def text_file_documents(pattern: str, jsonl_key: str = "text") -> list[str]:
  """Documents from the files matching a glob: blank-line paragraphs of `.txt` files and
  field `jsonl_key` of each line of `.jsonl` files (other suffixes are an error)."""
  docs = []
  for path in _matching_files(pattern):
    with open(path, encoding="utf-8", errors="replace") as f:
      if path.endswith(".txt"):
        docs.extend(split_paragraphs(f.read()))
      elif path.endswith(".jsonl"):
        docs.extend(json.loads(line)[jsonl_key] for line in f if line.strip())
      else:
        raise ValueError(f"{path}: text files must end in .txt or .jsonl")
  return docs


def image_folder(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """`<path>/<class_name>/*.png|jpg` -> (images uint8, labels int32, sorted class names).

  Images are not resized (that would silently change the data): they must share a shape.
  """
  class_names = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  images, labels = [], []
  for label, name in enumerate(class_names):
    for file in sorted(os.listdir(os.path.join(path, name))):
      if file.lower().endswith(IMAGE_SUFFIXES):
        with Image.open(os.path.join(path, name, file)) as im:
          images.append(np.asarray(im))
        labels.append(label)
  if not images:
    raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {path}/<class>/")
  shapes = sorted({im.shape for im in images})
  if len(shapes) > 1:
    raise ValueError(f"images under {path} have different shapes {shapes}; resize them first")
  return np.stack(images), np.asarray(labels, np.int32), class_names


def tfds_source(name: str, split: str, data_dir: str | None):
  """A prepared tfds dataset as a random-access ArrayRecord source (local or gs:// dir).

  `download=False`: building a dataset is a separate, explicit step (tfds build).
  """
  import tensorflow_datasets as tfds  # Lazy: only tfds users pay for the import.

  return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def tfds_documents(source, feature: str = "text", chunk: int = 1024) -> list[str]:
  """All values of a text feature of a tfds source, decoded as utf-8 documents."""
  docs = []
  for start in range(0, len(source), chunk):
    for item in source.__getitems__(range(start, min(start + chunk, len(source)))):
      value = item[feature]
      docs.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
  return docs


class TfdsImageSource:
  """A tfds source whose items carry an image feature, read as image examples."""

  def __init__(self, source, feature: str = "image", label_key: str = "label"):
    self.source, self.feature, self.label_key = source, feature, label_key

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    item = self.source[i]
    return image_example(item[self.feature], item[self.label_key])
