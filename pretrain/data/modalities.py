"""Each modality's data: its sources, its datasets, and its shapes from the config alone.

The trainer, the config check and the AOT compiler ask the objective's modality (registered
here by name) instead of branching on "text" / "image" / ...: a new kind of data (video,
audio, image-text pairs) is one class in its own module plus one import at the end of this
file, and nothing else changes.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from pretrain.data.info import DataInfo
from pretrain.data import pipeline, series
from pretrain.data.packing import pack_documents
from pretrain.data.sources import image_example
from pretrain.registry import Registry


class Modality:
  """What a registered modality provides. Sources are indexable, sized, and return dicts of
  NumPy arrays (one clean example each); host transforms turn them into model inputs."""

  sources: tuple[str, ...] = ()  # valid `data.source` values

  def build(self, config: ml_collections.ConfigDict, objective
            ) -> tuple[Any, Any, DataInfo, Any]:
    """(train source, validation source, DataInfo, tokenizer or None)."""
    raise NotImplementedError

  def abstract_info(self, config: ml_collections.ConfigDict) -> DataInfo:
    """The DataInfo the step's shapes depend on, from the config alone (no data read):
    what `pretrain.aot` compiles for."""
    raise NotImplementedError

  def abstract_example(self, info: DataInfo) -> dict[str, np.ndarray]:
    """One synthetic clean example with the real keys, shapes and dtypes."""
    raise NotImplementedError


MODALITIES: Registry[Modality] = Registry("modality")


class Text(Modality):
  sources = pipeline.TEXT_SOURCES

  def build(self, config, objective):
    kind = config.data.get("tokenizer") or objective.tokenizer
    examples = objective.text_examples(config)
    train_source, tok = pipeline.build_text_dataset(config.data, "train", kind, examples)
    eval_source, _ = pipeline.build_text_dataset(config.data, "validation", kind, examples)
    info = DataInfo(seq_len=config.data.seq_len, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                    mask_id=tok.mask_id, special_ids=tuple(int(i) for i in tok.special_ids),
                    sentence_end_ids=tok.sentence_end_ids())
    return train_source, eval_source, info, tok

  def abstract_info(self, config):
    # Token ids only need to be below the vocab size: no corpus read, no tokenizer trained.
    return DataInfo(seq_len=config.data.seq_len, vocab_size=config.data.vocab_size,
                    mask_id=1, special_ids=(0, 1))

  def abstract_example(self, info):
    ids = np.arange(info.seq_len, dtype=np.int32) % info.vocab_size
    rows = pack_documents([ids], [np.ones(info.seq_len, bool)], info.seq_len, eos_id=0)
    return {k: v[0] for k, v in rows.items()}


class Image(Modality):
  sources = pipeline.IMAGE_SOURCES

  def build(self, config, objective):
    train_source = pipeline.build_image_dataset(config.data, "train")
    eval_source = pipeline.build_image_dataset(config.data, "validation")
    return train_source, eval_source, DataInfo(image_shape=train_source[0]["image"].shape), None

  def abstract_info(self, config):
    return DataInfo(image_shape=(*config.model.image_size, config.model.channels))

  def abstract_example(self, info):
    return image_example(np.zeros(info.image_shape, np.uint8), 0)


class Series(Modality):
  sources = series.SERIES_SOURCES

  def build(self, config, objective):
    train_source, eval_source = (pipeline.build_series_dataset(config.data, split)
                                 for split in ("train", "validation"))
    return train_source, eval_source, series.data_info(config.data), None

  def abstract_info(self, config):
    return series.data_info(config.data)

  def abstract_example(self, info):
    return series.example(info)


MODALITIES.register("text")(Text())
MODALITIES.register("image")(Image())
MODALITIES.register("series")(Series())
from pretrain.data import audio  # noqa: E402,F401
from pretrain.data import video  # noqa: E402,F401
from pretrain.data import image_text  # noqa: E402,F401
