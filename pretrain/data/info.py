"""What the model and objective may know about a run's data, filled from its source.

Here, in the data layer, rather than with the objectives: data modules fill it in, and
importing the objectives package (which registers every objective, some of which use data
helpers) from a data module would be an import cycle.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What an objective may know about its data (filled by the trainer from the source)."""

  seq_len: int = 0
  vocab_size: int = 0
  pad_id: int = 0
  mask_id: int = -1
  special_ids: tuple[int, ...] = ()
  sentence_end_ids: tuple[int, ...] = ()  # tokens ending a sentence ('.', '!', '?')
  image_shape: tuple[int, ...] = ()  # (H, W, C)
  series_shape: tuple[int, ...] = ()  # (context_len, horizon, resolution ids)
  audio_shape: tuple[int, ...] = ()  # (frames, mel_bins) of a spectrogram clip
  video_shape: tuple[int, ...] = ()  # (T, H, W, C)
