"""Next-block prediction, semi-autoregressive (Ren et al. 2025, "Next Block Prediction:
Video Generation via Semi-Autoregressive Modeling").

The sequence is cut into equal blocks of `objective.block_size` tokens; attention is
bidirectional inside a block and causal across blocks (mask kind `block_causal`), and each
token predicts its counterpart in the next block: position p predicts p + block_size. A
block of tokens is then generated in one step. Blocks are positions // block_size, so they
restart at every packed segment, and the mask is still intersected with the segments; a
target past the segment's end gets weight 0 (`next_token_targets` at offset block_size).
On text a block is a run of tokens. On video (`next_block_video`) a block is one frame: the
frame's patches quantised to k-means codebook ids (pretrain/data/patch_codebook.py, our
stand-in for the paper's learned video tokenizer), frame after frame, so every token of
frame t sees all tokens of frames <= t and predicts the token at its place in frame t + 1.
"""
from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np

from models.attention import attention_mask
from models.transformer import transformer_flops_per_token
from models.vit import unpatchify
from objectives import base
from objectives.causal_lm import next_token_targets
from objectives.frame_prediction import clip_strips
from pretrain.data import patch_codebook, visual_tokens


@base.register("next_block")
class NextBlock(base.Objective):
  models = ("transformer", "transformer_extra_ids")
  modality = "text"
  unit = "tokens"
  tokenizer = "bpe"

  def block_size(self, config) -> int:
    return config.objective.block_size

  def seq_len(self, config, info) -> int:
    return info.seq_len

  def validate(self, config):
    block, seq_len = config.objective.block_size, config.data.seq_len
    if not 1 <= block < seq_len:
      raise ValueError(f"objective.block_size={block}: must be in [1, data.seq_len={seq_len})")

  def mask(self, batch, config):
    """Block-causal attention (B, 1, L, L): blocks = positions // block_size."""
    return attention_mask("block_causal", segment_ids=batch["segment_ids"],
                          block_ids=batch["positions"] // self.block_size(config))

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng
    net = model.bind(params)
    tokens, segment_ids, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    logits = net.logits(net(tokens, positions=positions, mask=self.mask(batch, config)))
    targets, weights = next_token_targets(tokens, segment_ids, self.block_size(config))
    loss, accuracy = base.token_loss(logits, targets, weights)
    return loss, {"accuracy": accuracy, "perplexity": jnp.exp(loss)}

  def units_per_example(self, config, info):
    return self.seq_len(config, info)

  def forward_flops_per_example(self, config, info, model_cfg):
    # A query in block b sees (b + 1) blocks: (L + block_size) / 2 keys on average.
    seq_len = self.seq_len(config, info)
    attended = (seq_len + self.block_size(config)) / 2
    return seq_len * transformer_flops_per_token(model_cfg, attended, with_logits=True)


class FrameTokens(grain.transforms.RandomMap):
  """Clip -> one row of patch tokens, frame after frame: tokens (T N,) int32 codebook ids,
  segment_ids all 1, positions 0..T N - 1 (so positions // N is the frame). Deterministic."""

  def __init__(self, codebook: np.ndarray, patch: int):
    self.codebook, self.patch = codebook, patch

  def random_map(self, example, rng):
    del rng
    patches = patch_codebook.frame_patches(example["video"], self.patch)
    length = len(patches)
    return {"tokens": visual_tokens.nearest_code(patches, self.codebook),
            "segment_ids": np.ones(length, np.int32),
            "positions": np.arange(length, dtype=np.int32)}


@base.register("next_block_video")
class NextBlockVideo(NextBlock):
  """Next-block prediction on video: a block is one frame of patch tokens."""

  models = ("patch_token_transformer",)
  modality = "video"
  tokenizer = ""

  def block_size(self, config) -> int:
    return (config.data.frame_size // config.model.patch_size[0]) ** 2

  def seq_len(self, config, info) -> int:
    return config.data.num_frames * self.block_size(config)

  def validate(self, config):
    (ph, pw), size = config.model.patch_size, config.data.frame_size
    if ph != pw or ph < 1 or size % ph:
      raise ValueError(f"model.patch_size={(ph, pw)}: the codebook's patches must be square "
                       f"and divide data.frame_size={size}")
    if config.data.num_frames < 2:
      raise ValueError(f"data.num_frames={config.data.num_frames}: next-frame blocks need "
                       ">= 2 frames")
    if config.model.codebook_size < 2:
      raise ValueError(f"model.codebook_size={config.model.codebook_size}: must be >= 2")
    length = self.seq_len(config, None)
    if config.model.max_len < length:
      raise ValueError(f"model.max_len={config.model.max_len} < data.num_frames x tokens "
                       f"per frame = {length}")

  def loss_fn(self, params, batch, rng, *, model, config):
    """Next-block cross-entropy, plus `copy_accuracy`: how often the token at the same place
    of the current frame is already the target (a static scene's score, the bar to clear)."""
    loss, metrics = super().loss_fn(params, batch, rng, model=model, config=config)
    targets, weights = next_token_targets(batch["tokens"], batch["segment_ids"],
                                          self.block_size(config))
    same = (batch["tokens"] == targets).astype(jnp.float32)
    return loss, {**metrics, "copy_accuracy": base.weighted_mean(same, weights)}

  def codebook(self, config) -> np.ndarray:
    """(codebook_size, patch^2 C) centroids, fitted on the training clips once, cached."""
    # Imported here: the data modules import objectives.base, which loads this package.
    from pretrain.data.modalities import MODALITIES
    return patch_codebook.fitted_codebook(
        config, lambda: MODALITIES.get(self.modality).build(config, self)[0])

  def host_transform(self, config, info):
    return FrameTokens(self.codebook(config), config.model.patch_size[0])

  def reconstructions(self, params, batch, rng, *, model, config):
    """Two strips per clip, frames drawn from their tokens' centroids: the clip as
    tokenised, and under it each frame as predicted in one step from the frames before it
    (the argmax token at every place; frame 0 has no prediction: white)."""
    del rng
    net = model.bind(params)
    tokens, per_frame = batch["tokens"], self.block_size(config)
    hidden = net(tokens, positions=batch["positions"], mask=self.mask(batch, config))
    predicted = jnp.argmax(net.logits(hidden[:, :-per_frame]), -1)  # frames 1..T-1
    codebook = self.codebook(config)
    patch, size = config.model.patch_size[0], config.data.frame_size
    channels = codebook.shape[1] // patch ** 2

    def frames(ids):  # (B, T' N) codebook ids -> (B, T', H, W, C) pixels in [0, 1]
      return unpatchify(jnp.asarray(codebook)[ids], (1, patch, patch),
                        (ids.shape[1] // per_frame, size, size), channels)

    blank = jnp.ones((tokens.shape[0], 1, size, size, channels))
    return {"reconstructions": clip_strips([frames(tokens),
                                            jnp.concatenate([blank, frames(predicted)], 1)])}
