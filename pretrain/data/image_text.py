"""Real image-text pairs offline: the emoji of `emoji-datasource-google` (MIT), the `image_text`
modality (CLIP, ALIP, M3AE).

The npm package ships a 64x64 PNG of every emoji (Google's Noto Emoji artwork) and
`emoji.json` with its Unicode name, short names, category and subcategory. The package
tarball is fetched once with `npm pack <package>@<exact version>` into the data cache (atomic
rename, like pretrain/data/pypi.py does for PyPI) and read straight from the .tgz with
`tarfile`: nothing is installed. Only the base emoji are used (1,911 in 16.0.0), not their
skin-tone variants, which would repeat the same caption with a different picture.

One example per emoji:
  image       uint8 (S, S, 3): the PNG's RGBA composited over white, resized (Lanczos) to
              `model.image_size` (square; the image modality's convention)
  tokens      int32 (text_len,): [CLS] caption [SEP], zero-padded (cut to fit: [SEP] stays)
  alt_tokens  int32 (text_len,): the same for the alternative caption
  label       int32 (): the category's index in `CATEGORIES` (for probes)

Captions, both built from real metadata, lowercased, '_' and '-' read as spaces:
  caption      the Unicode name:                       "grinning face"
  alt_caption  "<category>, <subcategory>: <short names joined by ', '>":
                                                        "smileys & emotion, face smiling: grinning"
ALIP pairs each raw caption with a second, complementary description of the same image (its
synthetic caption); here that is `alt_caption`, not a generated one.

Text is tokenised with a wordpiece vocabulary (pretrain/data/tokenizer.py) trained on the
training captions of both kinds and cached like the text corpora's. The split is by emoji: a
hash of its code point sequence holds out `HELDOUT_FRACTION` of them (corpora.heldout_mask).
"""
from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

import numpy as np
from PIL import Image

from pretrain.data.info import DataInfo
from pretrain.data import pipeline
from pretrain.data.corpora import heldout_mask
from pretrain.data.modalities import MODALITIES, Modality
from pretrain.data.tokenizer import Tokenizer, train_or_load_tokenizer

EMOJI_PACKAGE = "emoji-datasource-google"
EMOJI_VERSION = "16.0.0"
EMOJI_TARBALL = f"{EMOJI_PACKAGE}-{EMOJI_VERSION}.tgz"
_IMAGE_DIR = "package/img/google/64/"
IMAGE_TEXT_SOURCES = ("emoji",)
CATEGORIES = ("Activities", "Animals & Nature", "Component", "Flags", "Food & Drink",
              "Objects", "People & Body", "Smileys & Emotion", "Symbols", "Travel & Places")
HELDOUT_FRACTION = 0.05
_SPLITS = ("train", "validation")


def fetch_npm(cache_dir: str, spec: str, filename: str) -> str:
  """`<cache_dir>/<filename>`: the tarball of npm package `spec` (name@exact version),
  `npm pack`ed the first time into a private folder and renamed into place."""
  path = os.path.join(cache_dir, filename)
  if os.path.exists(path):
    return path
  by_hand = (f"Get it by hand on a machine with npm: `npm pack {spec}` (or download "
             f"https://registry.npmjs.org/{spec.split('@')[0]}/-/{filename}) and copy "
             f"{filename} into {cache_dir}")
  npm = shutil.which("npm")
  if npm is None:
    raise RuntimeError(f"npm is not installed, so {spec} cannot be fetched.\n{by_hand}")
  os.makedirs(cache_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
    result = subprocess.run([npm, "pack", spec, "--pack-destination", tmp], cwd=tmp,
                            capture_output=True, text=True)
    fetched = os.path.join(tmp, filename)
    if result.returncode != 0 or not os.path.exists(fetched):
      raise RuntimeError(f"could not fetch {spec} ({result.stderr.strip()[-500:]}).\n{by_hand}")
    os.replace(fetched, path)
  return path


def _words(text: str) -> str:
  return text.replace("_", " ").replace("-", " ").lower()


def captions(entry: dict) -> tuple[str, str]:
  """(caption, alt_caption) of one emoji.json entry (see the module docstring)."""
  short = ", ".join(_words(s) for s in entry["short_names"])
  return (_words(entry["name"]),
          f"{_words(entry['category'])}, {_words(entry['subcategory'])}: {short}")


def _rgb_over_white(png: bytes, size: int) -> np.ndarray:
  with Image.open(io.BytesIO(png)) as im:
    rgba = im.convert("RGBA")
  white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  rgb = Image.alpha_composite(white, rgba).convert("RGB")
  if rgb.size != (size, size):
    rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
  return np.asarray(rgb, np.uint8)


@functools.lru_cache(maxsize=4)
def read_emoji(cache_dir: str, image_size: int):
  """(images uint8 (N, S, S, 3), captions, alt captions, labels int32 (N,), keys) of every
  base emoji with a Google image, in emoji.json order; keys are the code point sequences."""
  path = fetch_npm(cache_dir, f"{EMOJI_PACKAGE}@{EMOJI_VERSION}", EMOJI_TARBALL)
  pngs = {}
  with tarfile.open(path, "r:gz") as tar:
    for member in tar:  # One pass over the gzip stream (random access would re-inflate it).
      if member.name == "package/emoji.json":
        entries = json.load(tar.extractfile(member))
      elif member.name.startswith(_IMAGE_DIR):
        pngs[member.name[len(_IMAGE_DIR):]] = tar.extractfile(member).read()
  entries = [e for e in entries if e["has_img_google"] and e["image"] in pngs]
  images = np.stack([_rgb_over_white(pngs[e["image"]], image_size) for e in entries])
  texts = [captions(e) for e in entries]
  labels = np.asarray([CATEGORIES.index(e["category"]) for e in entries], np.int32)
  return (images, [t[0] for t in texts], [t[1] for t in texts], labels,
          [e["unified"] for e in entries])


def split_mask(keys: list[str], split: str) -> np.ndarray:
  """True for the emoji of `split` (a hash of the key decides; see corpora.heldout_mask)."""
  if split not in _SPLITS:
    raise ValueError(f"unknown image-text split {split!r}; valid: {', '.join(_SPLITS)}")
  held = heldout_mask(keys, HELDOUT_FRACTION)
  return held if split == "validation" else ~held


def encode_captions(tok: Tokenizer, texts: list[str], text_len: int) -> np.ndarray:
  """[CLS] ids [SEP] per caption, cut to `text_len` keeping [SEP] last, zero-padded:
  int32 (N, text_len). The [SEP] is where CLIP's text encoder pools (its EOS token)."""
  rows = np.zeros((len(texts), text_len), np.int32)
  for row, (ids, _) in zip(rows, tok.encode_batch(texts)):
    seq = [tok.cls_id, *ids[:text_len - 2].tolist(), tok.sep_id]
    row[:len(seq)] = seq
  return rows


class ImageTextSource:
  """Random-access emoji examples (see the module docstring for the keys)."""

  def __init__(self, images, tokens, alt_tokens, labels):
    self.images, self.tokens, self.alt_tokens, self.labels = images, tokens, alt_tokens, labels

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"image": self.images[i], "tokens": self.tokens[i],
            "alt_tokens": self.alt_tokens[i], "label": self.labels[i]}


def build_sources(data_cfg, image_size: int
                  ) -> tuple[ImageTextSource, ImageTextSource, Tokenizer]:
  """(train source, validation source, tokenizer trained on the training captions)."""
  if data_cfg.source not in IMAGE_TEXT_SOURCES:
    raise ValueError(f"unknown image-text source {data_cfg.source!r}; valid: "
                     f"{', '.join(IMAGE_TEXT_SOURCES)}")
  cache = pipeline.cache_dir(data_cfg)
  images, caption, alt_caption, labels, keys = read_emoji(cache, image_size)
  train = split_mask(keys, "train")
  documents = [t for t, keep in zip(caption + alt_caption, np.tile(train, 2)) if keep]
  tok = train_or_load_tokenizer(data_cfg.tokenizer, data_cfg.vocab_size,
                                f"emoji-{EMOJI_VERSION}-captions", documents, cache)
  tokens = encode_captions(tok, caption, data_cfg.text_len)
  alt_tokens = encode_captions(tok, alt_caption, data_cfg.text_len)
  train_source, eval_source = (
      ImageTextSource(images[keep], tokens[keep], alt_tokens[keep], labels[keep])
      for keep in (train, ~train))
  return train_source, eval_source, tok


def example(info: DataInfo) -> dict[str, np.ndarray]:
  """One synthetic example of the real keys, shapes and dtypes (what `pretrain.aot`
  compiles for): a white image and the caption [CLS] 5 [SEP]."""
  tokens = np.zeros(info.seq_len, np.int32)
  tokens[:3] = (2, 5, 3)
  return {"image": np.full(info.image_shape, 255, np.uint8), "tokens": tokens,
          "alt_tokens": tokens.copy(), "label": np.int32(0)}


def _image_size(config) -> int:
  height, width = config.model.image_size
  if height != width or config.model.channels != 3:
    raise ValueError(f"model.image_size={tuple(config.model.image_size)}, model.channels="
                     f"{config.model.channels}: emoji images are square RGB")
  return height


class ImageText(Modality):
  sources = IMAGE_TEXT_SOURCES

  def build(self, config, objective):
    train_source, eval_source, tok = build_sources(config.data, _image_size(config))
    info = DataInfo(seq_len=config.data.text_len, vocab_size=tok.vocab_size,
                    pad_id=tok.pad_id, mask_id=tok.mask_id,
                    special_ids=tuple(int(i) for i in tok.special_ids),
                    image_shape=train_source.images.shape[1:])
    return train_source, eval_source, info, tok

  def abstract_info(self, config):
    size = _image_size(config)
    return DataInfo(seq_len=config.data.text_len, vocab_size=config.data.vocab_size,
                    mask_id=4, special_ids=(0, 1, 2, 3, 4), image_shape=(size, size, 3))

  def abstract_example(self, info):
    return example(info)


MODALITIES.register("image_text")(ImageText())
