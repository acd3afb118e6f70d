"""Config section `model` -> model dataclass config -> NNX module, registered by name.

Size names are decoded by `models.variants` as "<family>:<size>" (e.g. "bert:base",
"bert:L-4_H-256", "gpt2:small", "vit:B/16"); "custom" takes the explicit sizes.
Explicit nonzero `num_layers`/`d_model`/`num_heads`/`d_ff` override a named size.
"""
from __future__ import annotations

import dataclasses

from models import variants
from models.audio import SSAST, FrameTransformer, FrameTransformerConfig
from models.classifier import (ClassifierConfig, ResNetClassifier, ResNetClassifierConfig,
                               ViTClassifier)
from models.clip import CLIP, CLIPConfig
from models.dino import DinoConfig, DinoViT
from models.drbert import DrBert, DrBertConfig
from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig, TaggingEncoderDecoder
from models.future_tokens import (FutureTokenConfig, FutureTokenLM, MultiTokenConfig,
                                  MultiTokenLM)
from models.m3ae import M3AE, M3AEConfig
from models.multi_branch import MultiBranchConfig, MultiBranchTransformer
from models.multimae import MultiMAE, MultiMAEConfig
from models.point_mae import PointMAE, PointMAEConfig
from models.predformer import PredFormer, PredFormerConfig
from models.spark import SparK, SparKConfig
from models.transformer import TextTransformer, TransformerConfig
from models.tsmixer import TinyTimeMixer, TTMConfig
from models.video_vit import VideoMAE, ViTok, ViTokConfig
from models.vit import MAE, ViTConfig
from models.vit_pretext import PositionPredictor, SiT, SiTConfig
from models.vit_variants import CAEConfig, ContextAutoencoder, SiameseMAE
from pretrain.data.info import DataInfo
from pretrain.registry import MODELS

FAMILIES = {"bert": variants.bert, "gpt2": variants.gpt2, "vit": variants.vit}
SIZE_KEYS = ("num_layers", "d_model", "num_heads", "d_ff")
DECODER_KEYS = ("dec_d_model", "dec_layers", "dec_heads", "dec_d_ff")  # MAE; absent = none
VOCAB_MULTIPLE = 128  # Pad the logits' vocab dimension so it shards and tiles evenly.


def decode_size(model_cfg) -> dict:
  """The variant's sizes with explicit nonzero size keys applied on top."""
  variant = model_cfg.variant
  if variant == "custom":
    size = {}
  else:
    family, sep, name = variant.partition(":")
    if not sep or family not in FAMILIES:
      raise ValueError(f"model.variant={variant!r}: expected 'custom' or '<family>:<size>' "
                       f"with family in {sorted(FAMILIES)}")
    size = FAMILIES[family](name)
  for key in SIZE_KEYS:
    if model_cfg[key]:
      size[key] = model_cfg[key]
  missing = [k for k in SIZE_KEYS if not size.get(k)]
  if missing:
    raise ValueError(f"model.variant={variant!r} leaves {', '.join('model.' + k for k in missing)} "
                     "unset; give them explicitly")
  return size


def padded_vocab(vocab_size: int) -> int:
  return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def stack_options(model_cfg) -> dict:
  """How every transformer stack of the model runs: scanned or not, remat policy."""
  return dict(scan_layers=model_cfg.scan_layers, remat=model_cfg.remat)


class TransformerBuilder:
  """Text encoder/decoder (BERT, GPT-2, ...): `TextTransformer`."""

  def model_config(self, model_cfg, info: DataInfo) -> TransformerConfig:
    size = decode_size(model_cfg)
    return TransformerConfig(
        vocab_size=padded_vocab(info.vocab_size), max_len=model_cfg.max_len,
        pos_emb=model_cfg.pos_emb, norm=model_cfg.norm, norm_type=model_cfg.norm_type,
        activation=model_cfg.activation,
        dtype=model_cfg.dtype, tie_embeddings=model_cfg.tie_embeddings,
        head_transform=model_cfg.head_transform, embed_norm=model_cfg.embed_norm,
        ln_eps=model_cfg.ln_eps, use_bias=model_cfg.use_bias, **stack_options(model_cfg),
        **{k: size[k] for k in SIZE_KEYS})

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo(vocab_size=1)).validate()

  def build(self, cfg: TransformerConfig, rngs):
    return TextTransformer(cfg, rngs=rngs)


class MaeBuilder:
  """ViT MAE encoder + light decoder: `MAE`."""

  def model_config(self, model_cfg, info: DataInfo) -> ViTConfig:
    if model_cfg.embed_norm:
      raise ValueError("model.embed_norm is for text models; the ViT has no embedding norm")
    if model_cfg.norm_type != "layernorm":
      raise ValueError(f"model.norm_type={model_cfg.norm_type!r}: the ViT/MAE uses layernorm")
    size = decode_size(model_cfg)
    patch = tuple(model_cfg.patch_size) if any(model_cfg.patch_size) else size.get("patch_size")
    if not patch:
      raise ValueError(f"model.variant={model_cfg.variant!r} names no patch size; set "
                       "model.patch_size")
    image_size = tuple(info.image_shape[:-1]) or tuple(model_cfg.image_size)
    channels = info.image_shape[-1] if info.image_shape else model_cfg.channels
    return ViTConfig(
        image_size=image_size, patch_size=patch, channels=channels, pos_emb=model_cfg.pos_emb,
        norm=model_cfg.norm, activation=model_cfg.activation, dtype=model_cfg.dtype,
        ln_eps=model_cfg.ln_eps, **{k: model_cfg[k] for k in DECODER_KEYS if k in model_cfg},
        **stack_options(model_cfg), **{k: size[k] for k in SIZE_KEYS})

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo()).validate()

  def build(self, cfg: ViTConfig, rngs):
    return MAE(cfg, rngs=rngs)


class EncoderDecoderBuilder(TransformerBuilder):
  """T5-style encoder-decoder: `EncoderDecoder`; the vocabulary gains `model.extra_ids`
  ids (span-corruption sentinels) above the tokenizer's."""

  def model_config(self, model_cfg, info: DataInfo) -> EncoderDecoderConfig:
    info = dataclasses.replace(info, vocab_size=info.vocab_size + model_cfg.extra_ids)
    return EncoderDecoderConfig(**dataclasses.asdict(super().model_config(model_cfg, info)),
                                dec_layers=model_cfg.num_decoder_layers,
                                dec_embeddings=model_cfg.dec_embeddings)

  def build(self, cfg: EncoderDecoderConfig, rngs):
    return EncoderDecoder(cfg, rngs=rngs)


class TaggingEncoderDecoderBuilder(EncoderDecoderBuilder):
  """`encoder_decoder` plus a per-token binary head on the encoder (CodeT5)."""

  def build(self, cfg: EncoderDecoderConfig, rngs):
    return TaggingEncoderDecoder(cfg, rngs=rngs)


MODELS.register("transformer")(TransformerBuilder())
MODELS.register("mae")(MaeBuilder())
MODELS.register("encoder_decoder")(EncoderDecoderBuilder())


class DinoBuilder(MaeBuilder):
  """ViT backbone (the `mae` model keys, no decoder) + DINO projection head: `DinoViT`."""

  def model_config(self, model_cfg, info: DataInfo) -> DinoConfig:
    return DinoConfig(vit=super().model_config(model_cfg, info),
                      head_hidden_dim=model_cfg.head_hidden_dim,
                      head_bottleneck_dim=model_cfg.head_bottleneck_dim,
                      out_dim=model_cfg.head_out_dim,
                      mask_token=model_cfg.mask_token)

  def build(self, cfg: DinoConfig, rngs):
    return DinoViT(cfg, rngs=rngs)


MODELS.register("dino")(DinoBuilder())
MODELS.register("encoder_decoder_tagger")(TaggingEncoderDecoderBuilder())


class DrBertBuilder(TransformerBuilder):
  """BERT encoder + pretraining-only MLM decoder blocks (`model.mlm_decoder_layers`)."""

  def model_config(self, model_cfg, info: DataInfo) -> DrBertConfig:
    return DrBertConfig(**dataclasses.asdict(super().model_config(model_cfg, info)),
                        mlm_decoder_layers=model_cfg.mlm_decoder_layers)

  def build(self, cfg: DrBertConfig, rngs):
    return DrBert(cfg, rngs=rngs)


MODELS.register("drbert")(DrBertBuilder())


class ExtraIdsTransformerBuilder(TransformerBuilder):
  """`TextTransformer` whose vocabulary gains `model.extra_ids` ids above the tokenizer's
  (UniXcoder's mode tokens), as the encoder-decoder's does for T5's sentinels."""

  def model_config(self, model_cfg, info: DataInfo) -> TransformerConfig:
    info = dataclasses.replace(info, vocab_size=info.vocab_size + model_cfg.extra_ids)
    return super().model_config(model_cfg, info)


MODELS.register("transformer_extra_ids")(ExtraIdsTransformerBuilder())


class MultiBranchBuilder(TransformerBuilder):
  """Shared backbone + AE and AR branches (ERNIE 3.0): `MultiBranchTransformer`; the
  branches' sizes are `model.branch_*`."""

  def model_config(self, model_cfg, info: DataInfo) -> MultiBranchConfig:
    return MultiBranchConfig(**dataclasses.asdict(super().model_config(model_cfg, info)),
                             branch_layers=model_cfg.branch_layers,
                             branch_d_model=model_cfg.branch_d_model,
                             branch_heads=model_cfg.branch_heads,
                             branch_d_ff=model_cfg.branch_d_ff)

  def build(self, cfg: MultiBranchConfig, rngs):
    return MultiBranchTransformer(cfg, rngs=rngs)


MODELS.register("multi_branch")(MultiBranchBuilder())


class MultiTokenBuilder(TransformerBuilder):
  """Shared trunk + `model.num_future` one-block heads (Gloeckle et al. 2024):
  `MultiTokenLM`."""

  def model_config(self, model_cfg, info: DataInfo) -> MultiTokenConfig:
    return MultiTokenConfig(**dataclasses.asdict(super().model_config(model_cfg, info)),
                            num_future=model_cfg.num_future)

  def build(self, cfg: MultiTokenConfig, rngs):
    return MultiTokenLM(cfg, rngs=rngs)


class FutureTokenBuilder(TransformerBuilder):
  """FTP (Walker 2024): causal encoder + `model.num_decoder_layers`-block decoder over a
  `model.num_future`-vector pseudo-sequence: `FutureTokenLM`."""

  def model_config(self, model_cfg, info: DataInfo) -> FutureTokenConfig:
    return FutureTokenConfig(**dataclasses.asdict(super().model_config(model_cfg, info)),
                             dec_layers=model_cfg.num_decoder_layers,
                             num_future=model_cfg.num_future)

  def build(self, cfg: FutureTokenConfig, rngs):
    return FutureTokenLM(cfg, rngs=rngs)


MODELS.register("multi_token")(MultiTokenBuilder())
MODELS.register("ftp")(FutureTokenBuilder())


class TTMBuilder:
  """Tiny Time Mixers (Ekambaram et al. 2024): `TinyTimeMixer`; window and horizon come
  from the data (`DataInfo.series_shape`), the resolution prefix from `model.resolution_prefix`."""

  def model_config(self, model_cfg, info: DataInfo) -> TTMConfig:
    if model_cfg.scan_layers or model_cfg.remat != "none":
      raise ValueError("model.scan_layers / model.remat: the ttm mixer has no transformer "
                       "stack to scan or remat; leave them false / none")
    context_len, horizon, resolutions = info.series_shape or (
        model_cfg.patch_len, 1, 1)  # Structure checks only (validate) before data exists.
    return TTMConfig(
        context_len=context_len, horizon=horizon, patch_len=model_cfg.patch_len,
        patch_stride=model_cfg.patch_stride, d_model=model_cfg.d_model,
        num_layers=model_cfg.num_layers, expansion=model_cfg.expansion_factor,
        adaptive_levels=model_cfg.adaptive_levels, decoder_d_model=model_cfg.decoder_d_model,
        decoder_layers=model_cfg.decoder_num_layers,
        num_resolutions=resolutions if model_cfg.resolution_prefix else 0,
        gated_attn=model_cfg.gated_attn, ln_eps=model_cfg.ln_eps, dtype=model_cfg.dtype)

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo()).validate()

  def build(self, cfg: TTMConfig, rngs):
    return TinyTimeMixer(cfg, rngs=rngs)


MODELS.register("ttm")(TTMBuilder())


class SiameseMaeBuilder(MaeBuilder):
  """MAE whose decoder cross-attends to a second, visible view: `SiameseMAE` (CropMAE)."""

  def build(self, cfg: ViTConfig, rngs):
    return SiameseMAE(cfg, rngs=rngs)


MODELS.register("siamese_mae")(SiameseMaeBuilder())


class CaeBuilder(MaeBuilder):
  """CAE's encoder, latent regressor (`model.reg_layers` blocks) and pixel decoder."""

  def model_config(self, model_cfg, info: DataInfo) -> CAEConfig:
    vit = super().model_config(model_cfg, info)
    return CAEConfig(**dataclasses.asdict(vit), reg_layers=model_cfg.reg_layers)

  def build(self, cfg: CAEConfig, rngs):
    return ContextAutoencoder(cfg, rngs=rngs)


MODELS.register("cae")(CaeBuilder())


class TokenUnifyBuilder(MultiTokenBuilder):
  """`MultiTokenLM` over image tokens (TokenUnify): the vocabulary is the visual
  tokenizer's `model.codebook_size` codes plus [MASK]."""

  def model_config(self, model_cfg, info: DataInfo) -> MultiTokenConfig:
    info = dataclasses.replace(info, vocab_size=model_cfg.codebook_size + 1)
    return super().model_config(model_cfg, info)


MODELS.register("token_unify")(TokenUnifyBuilder())


class PointMaeBuilder:
  """Point-MAE-style encoder/decoder over point tokens (I2P-MAE): `PointMAE`."""

  def model_config(self, model_cfg, info: DataInfo) -> PointMAEConfig:
    return PointMAEConfig(
        group_size=model_cfg.group_size, d_model=model_cfg.d_model,
        num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads, d_ff=model_cfg.d_ff,
        dec_layers=model_cfg.dec_layers, dec_heads=model_cfg.dec_heads,
        embed_dims=tuple(model_cfg.point_embed_dims), norm=model_cfg.norm,
        activation=model_cfg.activation, dtype=model_cfg.dtype, ln_eps=model_cfg.ln_eps,
        **stack_options(model_cfg))

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo()).validate()

  def build(self, cfg: PointMAEConfig, rngs):
    return PointMAE(cfg, rngs=rngs)


MODELS.register("point_mae")(PointMaeBuilder())


class SiTBuilder(MaeBuilder):
  """GMML / SiT: ViT over all corrupted patches + rotation and contrastive tokens and a
  per-patch pixel head of `model.rec_layers` hidden layers (`models.vit_pretext.SiT`)."""

  def model_config(self, model_cfg, info: DataInfo) -> SiTConfig:
    return SiTConfig(vit=super().model_config(model_cfg, info),
                     rec_layers=model_cfg.rec_layers, contrastive_dim=model_cfg.contrastive_dim)

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo()).validate()

  def build(self, cfg: SiTConfig, rngs):
    return SiT(cfg, rngs=rngs)


class PositionPredictorBuilder(MaeBuilder):
  """MP3: ViT without position embeddings (model.pos_emb must be none) + an N-way position
  classifier per patch (`models.vit_pretext.PositionPredictor`)."""

  def validate(self, model_cfg) -> None:
    if model_cfg.pos_emb != "none":
      raise ValueError(f"model.pos_emb={model_cfg.pos_emb!r}: position_predictor has no "
                       "position embeddings; set model.pos_emb=none")
    super().validate(model_cfg)

  def build(self, cfg: ViTConfig, rngs):
    return PositionPredictor(cfg, rngs=rngs)


MODELS.register("sit")(SiTBuilder())
MODELS.register("position_predictor")(PositionPredictorBuilder())


class SsastBuilder:
  """SSAST: `models.vit` ViT over one-channel (frames, mel_bins) spectrogram patches (the
  `mae` model keys, no decoder) + mask embedding + two heads: `SSAST`. The spectrogram
  shape comes from the data (`DataInfo.audio_shape`)."""

  def model_config(self, model_cfg, info: DataInfo) -> ViTConfig:
    size = decode_size(model_cfg)
    patch = tuple(model_cfg.patch_size)
    # Structure checks only (validate) before data exists; objectives check the data's shape.
    spectrogram = tuple(info.audio_shape) or patch
    return ViTConfig(image_size=spectrogram, patch_size=patch, channels=1,
                     pos_emb=model_cfg.pos_emb, norm=model_cfg.norm,
                     activation=model_cfg.activation, dtype=model_cfg.dtype,
                     ln_eps=model_cfg.ln_eps, **stack_options(model_cfg),
                     **{k: size[k] for k in SIZE_KEYS})

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo()).validate()

  def build(self, cfg: ViTConfig, rngs):
    return SSAST(cfg, rngs=rngs)


class FrameTransformerBuilder:
  """TERA's frame transformer + prediction head: `FrameTransformer`; the mel bins per frame
  come from the data (`DataInfo.audio_shape`)."""

  def model_config(self, model_cfg, info: DataInfo) -> FrameTransformerConfig:
    size = decode_size(model_cfg)
    num_bins = info.audio_shape[1] if info.audio_shape else 1  # validate: structure only
    return FrameTransformerConfig(num_bins=num_bins, norm=model_cfg.norm,
                                  activation=model_cfg.activation, dtype=model_cfg.dtype,
                                  ln_eps=model_cfg.ln_eps, **stack_options(model_cfg),
                                  **{k: size[k] for k in SIZE_KEYS})

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo()).validate()

  def build(self, cfg: FrameTransformerConfig, rngs):
    return FrameTransformer(cfg, rngs=rngs)


MODELS.register("ssast")(SsastBuilder())
MODELS.register("frame_transformer")(FrameTransformerBuilder())


class TubeBuilder(MaeBuilder):
  """ViT models over patches of images or tubes of videos (`model.patch_size` or the
  variant's, e.g. vit:B/2x16x16, one side per axis of the data): the input shape comes from
  `DataInfo.video_shape` (or `image_shape`), no cls token (VideoMAE and ViTok pool or keep
  every patch token)."""

  def model_config(self, model_cfg, info: DataInfo) -> ViTConfig:
    shape = DataInfo(image_shape=info.video_shape or info.image_shape)
    return dataclasses.replace(super().model_config(model_cfg, shape), use_cls_token=False)

  def validate(self, model_cfg) -> None:
    """Before any data is read: the config on an input of exactly one patch."""
    patch = self.model_config(model_cfg, DataInfo(image_shape=(1, 1))).patch_size
    self.model_config(model_cfg, DataInfo(image_shape=(*patch, 1))).validate()


class VideoMaeBuilder(TubeBuilder):
  """VideoMAE V2: the MAE encoder and a decoder over the visible latents plus a subset of
  mask tokens (dual masking): `VideoMAE`."""

  def build(self, cfg: ViTConfig, rngs):
    return VideoMAE(cfg, rngs=rngs)


class ViTokBuilder(TubeBuilder):
  """ViTok: ViT encoder, linear bottleneck to `model.latent_channels` per token, ViT
  decoder (the dec_* keys): `ViTok`."""

  def model_config(self, model_cfg, info: DataInfo) -> ViTokConfig:
    vit = super().model_config(model_cfg, info)
    return ViTokConfig(**dataclasses.asdict(vit), latent_channels=model_cfg.latent_channels)

  def build(self, cfg: ViTokConfig, rngs):
    return ViTok(cfg, rngs=rngs)


MODELS.register("videomae")(VideoMaeBuilder())
MODELS.register("vitok")(ViTokBuilder())


class PredFormerBuilder:
  """PredFormer (Tang et al. 2024): gated transformer blocks over frame patches, attending
  as `model.st_attention` / `model.st_pattern` say; frames' size and channels come from the
  data (`DataInfo.video_shape`)."""

  def model_config(self, model_cfg, info: DataInfo) -> PredFormerConfig:
    # Before data exists (validate), one single-channel frame of one patch stands in.
    _, height, width, channels = info.video_shape or (1, *model_cfg.patch_size, 1)
    return PredFormerConfig(
        image_size=(height, width), patch_size=tuple(model_cfg.patch_size), channels=channels,
        layout=model_cfg.st_attention, pattern=model_cfg.st_pattern, dtype=model_cfg.dtype,
        ln_eps=model_cfg.ln_eps, **stack_options(model_cfg),
        **{k: v for k, v in decode_size(model_cfg).items() if k in SIZE_KEYS})

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo()).validate()

  def build(self, cfg: PredFormerConfig, rngs):
    return PredFormer(cfg, rngs=rngs)


MODELS.register("predformer")(PredFormerBuilder())


class PatchTokenTransformerBuilder(TransformerBuilder):
  """`TextTransformer` over video patch tokens (next_block_video): the vocabulary is the
  k-means codebook of `model.codebook_size` patches (pretrain/data/patch_codebook.py)."""

  def model_config(self, model_cfg, info: DataInfo) -> TransformerConfig:
    info = dataclasses.replace(info, vocab_size=model_cfg.codebook_size)
    return super().model_config(model_cfg, info)


MODELS.register("patch_token_transformer")(PatchTokenTransformerBuilder())


class ClipBuilder(MaeBuilder):
  """CLIP's dual encoder: the `mae` model keys' ViT (with CLIP's pre-stack LayerNorm, no
  decoder) and a causal text encoder of `model.text_*` sizes over `model.max_len` positions,
  both projected to `model.embed_dim`: `CLIP`. Weights start at std width^-0.5 as CLIP's
  (OpenAI clip/model.py: attention, class token and position tables), not BERT's 0.02,
  which at small widths leaves the class token blind to the image at init."""

  def model_config(self, model_cfg, info: DataInfo) -> CLIPConfig:
    text = TransformerConfig(
        vocab_size=padded_vocab(info.vocab_size), max_len=model_cfg.max_len,
        num_layers=model_cfg.text_layers, d_model=model_cfg.text_d_model,
        num_heads=model_cfg.text_heads, d_ff=model_cfg.text_d_ff, norm=model_cfg.norm,
        activation=model_cfg.activation, dtype=model_cfg.dtype, ln_eps=model_cfg.ln_eps,
        init_std=model_cfg.text_d_model ** -0.5, **stack_options(model_cfg))
    vision = super().model_config(model_cfg, info)
    vision = dataclasses.replace(vision, pre_norm=True, init_std=vision.d_model ** -0.5)
    return CLIPConfig(vision=vision, text=text, embed_dim=model_cfg.embed_dim,
                      init_temperature=model_cfg.init_temperature)

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo(vocab_size=1)).validate()

  def build(self, cfg: CLIPConfig, rngs):
    return CLIP(cfg, rngs=rngs)


MODELS.register("clip")(ClipBuilder())


class M3aeBuilder(MaeBuilder):
  """Single-stream M3AE: the `mae` model keys (encoder, image decoder) plus captions of up
  to `model.max_len` tokens; the image decoder reads the stream after `model.image_layer`
  blocks: `M3AE`."""

  def model_config(self, model_cfg, info: DataInfo) -> M3AEConfig:
    vit = super().model_config(model_cfg, info)
    return M3AEConfig(**dataclasses.asdict(vit), vocab_size=padded_vocab(info.vocab_size),
                      text_len=model_cfg.max_len,
                      image_layer=model_cfg.image_layer)

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo(vocab_size=1)).validate()

  def build(self, cfg: M3AEConfig, rngs):
    return M3AE(cfg, rngs=rngs)


MODELS.register("m3ae")(M3aeBuilder())
class ClassifierBuilder(MaeBuilder):
  """ViT backbone (the `mae` model keys, no decoder) + linear head over `model.num_classes`
  (0 = none): `ViTClassifier` (classify, ssld, look)."""

  def model_config(self, model_cfg, info: DataInfo) -> ClassifierConfig:
    return ClassifierConfig(vit=super().model_config(model_cfg, info),
                            num_classes=model_cfg.num_classes)

  def build(self, cfg: ClassifierConfig, rngs):
    return ViTClassifier(cfg, rngs=rngs)


MODELS.register("vit_classifier")(ClassifierBuilder())


class MultiMaeBuilder(MaeBuilder):
  """MultiMAE: the ViT over the image and its derived modalities (edges, and
  `model.segment_classes` intensity classes embedded `model.class_embed_dim` wide), one
  decoder (the dec_* sizes) per modality: `MultiMAE`."""

  def model_config(self, model_cfg, info: DataInfo) -> MultiMAEConfig:
    from objectives.multimae import derived_modalities  # what its host transform adds
    return MultiMAEConfig(**dataclasses.asdict(super().model_config(model_cfg, info)),
                          extra_modalities=derived_modalities(model_cfg.segment_classes),
                          class_embed_dim=model_cfg.class_embed_dim)

  def build(self, cfg: MultiMAEConfig, rngs):
    return MultiMAE(cfg, rngs=rngs)


MODELS.register("multimae")(MultiMaeBuilder())


class SparKBuilder:
  """SparK: sparse ResNet encoder (`model.stem_*`, `model.stage_*`, `model.bottleneck`)
  + light UNet decoder (`model.dec_width`): `SparK`."""

  def model_config(self, model_cfg, info: DataInfo) -> SparKConfig:
    if model_cfg.scan_layers or model_cfg.remat != "none":
      raise ValueError("model.scan_layers / model.remat: the spark CNN has no transformer "
                       "stack to scan or remat; leave them false / none")
    image_size = tuple(info.image_shape[:-1]) or tuple(model_cfg.image_size)
    channels = info.image_shape[-1] if info.image_shape else model_cfg.channels
    return SparKConfig(
        image_size=image_size, channels=channels, stem_width=model_cfg.stem_width,
        stem_kernel=model_cfg.stem_kernel, stem_stride=model_cfg.stem_stride,
        stem_pool=model_cfg.stem_pool, stage_blocks=tuple(model_cfg.stage_blocks),
        stage_widths=tuple(model_cfg.stage_widths), bottleneck=model_cfg.bottleneck,
        dec_width=model_cfg.get("dec_width", SparKConfig.dec_width),  # resnet_classifier: none
        dtype=model_cfg.dtype)

  def validate(self, model_cfg) -> None:
    self.model_config(model_cfg, DataInfo()).validate()

  def build(self, cfg: SparKConfig, rngs):
    return SparK(cfg, rngs=rngs)


MODELS.register("spark")(SparKBuilder())


class ResNetClassifierBuilder(SparKBuilder):
  """SparK's ResNet (the spark `model.stem_*`/`stage_*`/`bottleneck` keys), nothing masked,
  + linear head over `model.num_classes` (0 = none): `ResNetClassifier` (classify, ssld,
  look)."""

  def model_config(self, model_cfg, info: DataInfo) -> ResNetClassifierConfig:
    return ResNetClassifierConfig(resnet=super().model_config(model_cfg, info),
                                  num_classes=model_cfg.num_classes)

  def build(self, cfg: ResNetClassifierConfig, rngs):
    return ResNetClassifier(cfg, rngs=rngs)


MODELS.register("resnet_classifier")(ResNetClassifierBuilder())
