"""Tests for models/: masks, attention, packing isolation, patches, MAE, sizes, FLOPs."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import variants
from models.attention import attention_mask, dot_product_attention
from models.layers import apply_rotary
from models.transformer import (TextTransformer, TransformerConfig,
                                transformer_flops_per_token)
from models.vit import (MAE, ViT, ViTConfig, mae_flops_per_image, patchify, unpatchify,
                        vit_encoder_flops_per_image)

TINY = TransformerConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, d_ff=64,
                         max_len=16)
TINY_VIT = ViTConfig(image_size=(8, 8), patch_size=(4, 4), channels=3, d_model=16,
                     num_layers=1, num_heads=2, d_ff=32, dec_d_model=8, dec_layers=1,
                     dec_heads=2, dec_d_ff=16)
SEGS = np.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * 3 + [2] * 6 + [3] * 3])  # (2, 12)


def _positions(segs):
  """Positions restarting at 0 in each packed segment."""
  pos = np.zeros_like(segs)
  for b, row in enumerate(segs):
    for i in range(1, len(row)):
      pos[b, i] = pos[b, i - 1] + 1 if row[i] == row[i - 1] else 0
  return pos


def _build(cls, cfg):
  with nnx.use_eager_sharding(False):
    return cls(cfg, rngs=nnx.Rngs(0))


@functools.lru_cache(maxsize=None)
def _text_model(**overrides):
  """(graphdef, params, rest) of a tiny TextTransformer, built once per variant."""
  cfg = TransformerConfig(**{**TINY.__dict__, **overrides})
  return nnx.split(_build(TextTransformer, cfg), nnx.Param, ...)


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def _hidden(graphdef, params, rest, tokens, segs, positions, *, kind):
  model = nnx.merge(graphdef, params, rest)
  return model(tokens, mask=attention_mask(kind, segment_ids=segs), positions=positions)


def _tokens(seed=0):
  return np.random.default_rng(seed).integers(1, TINY.vocab_size, SEGS.shape)


# --- masks and attention -------------------------------------------------------------


def test_attention_mask_causal_with_segments_and_padding():
  got = attention_mask("causal", segment_ids=jnp.array([[1, 1, 2, 2, 0]]))
  want = np.array([[1, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0],
                   [0, 0, 1, 0, 0],
                   [0, 0, 1, 1, 0],
                   [0, 0, 0, 0, 0]], bool)
  assert got.shape == (1, 1, 5, 5)
  np.testing.assert_array_equal(got[0, 0], want)


def test_attention_mask_bidirectional_with_segments_and_padding():
  got = attention_mask("bidirectional", segment_ids=jnp.array([[1, 1, 2, 0]]))
  want = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(got[0, 0], want)
  plain = attention_mask("bidirectional", length=3, batch=2)
  assert plain.shape == (2, 1, 3, 3) and bool(plain.all())


def test_attention_mask_prefix_per_example():
  got = attention_mask("prefix", length=4, prefix_len=jnp.array([2, 0]))
  want_2 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(got[0, 0], want_2)
  np.testing.assert_array_equal(got[1, 0], np.tril(np.ones((4, 4), bool)))


def test_attention_mask_cross_segments_and_errors():
  got = attention_mask("bidirectional", segment_ids=jnp.array([[1, 2]]),
                       kv_segment_ids=jnp.array([[1, 1, 2, 0]]))
  np.testing.assert_array_equal(got[0, 0], np.array([[1, 1, 0, 0], [0, 0, 1, 0]], bool))
  with pytest.raises(ValueError, match="bidirectional.*causal.*prefix"):
    attention_mask("sliding", length=4)
  with pytest.raises(ValueError, match="prefix_len"):
    attention_mask("prefix", length=4)


def test_dot_product_attention_matches_numpy():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=s).astype(np.float32) for s in [(2, 3, 2, 4), (2, 5, 2, 4),
                                                            (2, 5, 2, 4)])
  mask = rng.random((2, 1, 3, 5)) < 0.6
  mask[0, 0, 1] = False  # a fully masked row, like a padding query
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
  logits = np.where(mask, logits, -1e30)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  want = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)
  got = np.asarray(dot_product_attention(q, k, v, jnp.asarray(mask)))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dot_product_attention(q, k, v, None),
                             dot_product_attention(q, k, v, jnp.ones((2, 1, 3, 5), bool)))


def test_rotary_scores_depend_only_on_offset():
  rng = np.random.default_rng(1)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 2, 8)), jnp.float32) for _ in range(2))

  def score(pq, pk):
    rq = apply_rotary(q, jnp.array([[pq]]))
    rk = apply_rotary(k, jnp.array([[pk]]))
    return np.asarray(jnp.sum(rq * rk, -1))  # (1, 1, H)

  for offset in (0, 3):
    np.testing.assert_allclose(score(offset, 0), score(offset + 7, 7), rtol=1e-4, atol=1e-5)
  assert not np.allclose(score(3, 0), score(0, 0))


# --- packing and causality through the whole model -------------------------------------


@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
def test_packed_segments_are_isolated(pos_emb, kind):
  graphdef, params, rest = _text_model(pos_emb=pos_emb)
  run = lambda t: np.asarray(_hidden(graphdef, params, rest, t, SEGS, _positions(SEGS),
                                     kind=kind))
  tokens = _tokens()
  base = run(tokens)
  seg1 = SEGS == 1
  other = np.where(SEGS == 2, (tokens + 7) % TINY.vocab_size, tokens)
  np.testing.assert_array_equal(run(other)[seg1], base[seg1])
  # The same comparison sees a change inside the segment, so it can fail.
  last_of_seg1 = [4, 2]
  inside = tokens.copy()
  inside[np.arange(2), last_of_seg1] = (inside[np.arange(2), last_of_seg1] + 7) % 64
  changed = run(inside)
  assert not np.array_equal(changed[seg1], base[seg1])
  if kind == "bidirectional":  # the first token sees the last one only without causality
    assert not np.allclose(changed[:, 0], base[:, 0])


@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
def test_packed_segment_matches_the_sequence_alone(pos_emb):
  """Position restarts make a packed segment's states those of the unpacked sequence."""
  graphdef, params, rest = _text_model(pos_emb=pos_emb)
  tokens = _tokens()
  alone_segs = np.where(np.arange(12) < 4, 1, 0)[None].repeat(2, 0)
  alone = np.zeros_like(tokens)
  alone[:, :4] = tokens[0, 5:9]  # segment 2 of row 0, moved to the front
  run = lambda t, s: np.asarray(_hidden(graphdef, params, rest, t, s, _positions(s),
                                        kind="causal"))
  np.testing.assert_allclose(run(tokens, SEGS)[0, 5:9], run(alone, alone_segs)[0, :4],
                             rtol=1e-5, atol=1e-5)


def test_causal_future_tokens_do_not_change_the_past():
  graphdef, params, rest = _text_model(pos_emb="learned")
  segs = np.ones_like(SEGS)
  run = lambda t: np.asarray(_hidden(graphdef, params, rest, t, segs, _positions(segs),
                                     kind="causal"))
  tokens = _tokens()
  future = tokens.copy()
  future[:, 6:] = (future[:, 6:] + 5) % TINY.vocab_size
  base, changed = run(tokens), run(future)
  np.testing.assert_array_equal(changed[:, :6], base[:, :6])
  assert not np.allclose(changed[:, 6:], base[:, 6:])


# --- dtypes, abstract init, logical axes ------------------------------------------------


def test_bf16_compute_keeps_params_f32_and_tracks_f32():
  graphdef32, params, rest = _text_model(pos_emb="learned")
  graphdef16, params16, rest16 = _text_model(pos_emb="learned", dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params16))
  tokens = _tokens()
  h16 = _hidden(graphdef16, params, rest16, tokens, SEGS, _positions(SEGS), kind="causal")
  h32 = _hidden(graphdef32, params, rest, tokens, SEGS, _positions(SEGS), kind="causal")
  assert h16.dtype == jnp.bfloat16
  logits = nnx.merge(graphdef16, params, rest16).logits(h16)
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
  np.testing.assert_allclose(np.asarray(h16, np.float32), h32, atol=0.1)


def _specs(model_fn):
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(model_fn)
  _, params, _ = nnx.split(abstract, nnx.Param, ...)
  leaves = jax.tree_util.tree_leaves_with_path(nnx.get_partition_spec(params))
  shapes = jax.tree.leaves(params)
  assert all(isinstance(s, jax.ShapeDtypeStruct) for s in shapes)
  return [(jax.tree_util.keystr(p), spec, s.shape) for (p, spec), s in zip(leaves, shapes)]


@pytest.mark.parametrize("name,model_fn", [
    ("text", lambda: TextTransformer(
        TransformerConfig(**{**TINY.__dict__, "tie_embeddings": False, "head_transform": True,
                             "fused_qkv": True, "activation": "swiglu",
                             "norm_type": "rmsnorm"}), rngs=nnx.Rngs(0))),
    ("mae", lambda: MAE(TINY_VIT, rngs=nnx.Rngs(0))),
])
def test_abstract_init_and_logical_axes(name, model_fn):
  specs = _specs(model_fn)
  assert len(specs) > 10, name
  for path, spec, shape in specs:
    assert len(spec) == len(shape), (path, spec, shape)
    assert any(isinstance(a, str) for a in spec), (path, spec)
  params = {path for path, _, _ in specs}
  if name == "text":
    assert "['stack']['blocks'][0]['attn']['qkv']['kernel'].value" in params
    assert "['unembed']['table'].value" in params


def test_embed_norm_adds_only_its_own_params():
  """`embed_norm` (BERT's embedding LayerNorm) adds two norm params and draws no random
  numbers, so every other param, and the default tree, stay as they were."""
  flat = lambda params: {jax.tree_util.keystr(p): np.asarray(v)
                         for p, v in jax.tree_util.tree_leaves_with_path(params)}
  base, normed = flat(_text_model()[1]), flat(_text_model(embed_norm=True)[1])
  added = sorted(set(normed) - set(base))
  assert added == ["['embed_norm']['bias'].value", "['embed_norm']['scale'].value"], added
  for name, value in base.items():
    np.testing.assert_array_equal(normed[name], value, err_msg=name)


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="num_heads"):
    _build(TextTransformer, TransformerConfig(**{**TINY.__dict__, "num_heads": 5}))
  with pytest.raises(ValueError, match="pos_emb"):
    TransformerConfig(**{**TINY.__dict__, "pos_emb": "alibi"}).validate()
  with pytest.raises(ValueError, match=r"\(8, 8\).*\(3, 3\)"):
    ViTConfig(**{**TINY_VIT.__dict__, "patch_size": (3, 3)}).validate()


# --- patches, ViT, MAE -------------------------------------------------------------------


@pytest.mark.parametrize("shape,patch", [((2, 8, 12, 3), (4, 3)), ((2, 4, 6, 8, 2), (2, 3, 4))])
def test_patchify_round_trip(shape, patch):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  p = patchify(x, patch)
  n = math.prod(s // q for s, q in zip(shape[1:-1], patch))
  assert p.shape == (shape[0], n, math.prod(patch) * shape[-1])
  first = x[(slice(None),) + tuple(slice(0, q) for q in patch)].reshape(shape[0], -1)
  np.testing.assert_array_equal(p[:, 0], first)
  np.testing.assert_array_equal(unpatchify(p, patch, shape[1:-1], shape[-1]), x)
  with pytest.raises(ValueError, match="not divisible"):
    patchify(x, tuple(q + 1 for q in patch))


def test_vit_forward_2d_and_3d():
  images = jnp.ones((2, 8, 8, 3))
  assert _build(ViT, TINY_VIT)(images).shape == (2, 1 + 4, 16)
  video = ViTConfig(**{**TINY_VIT.__dict__, "image_size": (4, 8, 8), "patch_size": (2, 4, 4),
                       "d_model": 24, "pos_emb": "learned", "use_cls_token": False})
  assert _build(ViT, video)(jnp.ones((2, 4, 8, 8, 3))).shape == (2, 8, 24)


def test_mae_encode_sees_only_visible_patches():
  graphdef, params, rest = nnx.split(_build(MAE, TINY_VIT), nnx.Param, ...)

  @jax.jit
  def run(patches, keep):
    mae = nnx.merge(graphdef, params, rest)
    latent = mae.encode(patches, keep)
    return latent, mae.decode(latent, keep, TINY_VIT.num_patches)

  rng = np.random.default_rng(0)
  patches = rng.normal(size=(2, 4, TINY_VIT.patch_dim)).astype(np.float32)
  keep = np.array([[0, 2], [3, 1]])
  latent, pred = run(patches, keep)
  assert latent.shape == (2, 1 + 2, 16)
  assert pred.shape == (2, 4, TINY_VIT.patch_dim) and pred.dtype == jnp.float32
  masked = patches.copy()
  masked[0, [1, 3]] += 1.0
  masked[1, [0, 2]] += 1.0
  np.testing.assert_array_equal(run(masked, keep)[0], latent)
  visible = patches.copy()
  visible[0, 2] += 1.0
  assert not np.allclose(run(visible, keep)[0][0], latent[0])


# --- sizes and FLOPs ---------------------------------------------------------------------


def test_bert_variants():
  names = [f"L-{l}_H-{h}" for l in (2, 4, 6, 8, 10, 12) for h in (128, 256, 512, 768)]
  assert len(names) == 24
  for name in names:
    size = variants.bert(name)
    assert size["d_ff"] == 4 * size["d_model"] and size["num_heads"] == size["d_model"] // 64
  assert variants.bert("L-4_H-256") == dict(num_layers=4, d_model=256, num_heads=4, d_ff=1024)
  assert variants.bert("medium") == variants.bert("L-8_H-512")
  assert variants.bert("large") == dict(num_layers=24, d_model=1024, num_heads=16, d_ff=4096)
  with pytest.raises(ValueError, match="L-12_H-768"):
    variants.bert("L-3_H-128")


def test_gpt2_and_vit_variants():
  assert variants.gpt2("xl") == dict(num_layers=48, d_model=1600, num_heads=25, d_ff=6400)
  assert variants.vit("B/16") == dict(num_layers=12, d_model=768, num_heads=12, d_ff=3072,
                                      patch_size=(16, 16))
  assert variants.vit("Ti/2x16x16")["patch_size"] == (2, 16, 16)
  assert variants.vit("H/14")["num_layers"] == 32
  for bad, family in [("huge", "GPT-2"), ("X/16", "ViT")]:
    with pytest.raises(ValueError, match=family):
      (variants.gpt2 if family == "GPT-2" else variants.vit)(bad)


def test_transformer_flops_hand_count():
  cfg = TransformerConfig(vocab_size=10, num_layers=2, d_model=8, num_heads=2, d_ff=16)
  # Per layer: qkv+out 4*2*8*8 = 512, scores+values 2*2*4*8 = 128, mlp 2*2*8*16 = 512.
  assert transformer_flops_per_token(cfg, 4, with_logits=False) == 2 * 1152
  assert transformer_flops_per_token(cfg, 4, with_logits=True) == 2 * 1152 + 2 * 8 * 10
  swiglu = TransformerConfig(**{**cfg.__dict__, "activation": "swiglu"})
  assert transformer_flops_per_token(swiglu, 4, with_logits=False) == 2 * (1152 + 256)


def test_vision_flops():
  cfg = ViTConfig(**{**TINY_VIT.__dict__, "num_layers": 1})
  # 4 patches of 48 values -> 16 wide; 5 tokens: 8*16*16 + 4*5*16 + 4*16*32 = 4416 each.
  assert vit_encoder_flops_per_image(cfg, 4) == 4 * 2 * 48 * 16 + 5 * 4416
  full, masked = mae_flops_per_image(cfg, 0.0), mae_flops_per_image(cfg, 0.75)
  dec_tok = 8 * 8 * 8 + 4 * 5 * 8 + 4 * 8 * 16  # decoder: 8 wide, 5 tokens
  want = (vit_encoder_flops_per_image(cfg, 1) + 2 * 2 * 16 * 8 + 5 * dec_tok
          + 4 * 2 * 8 * 48)
  assert masked == want and masked < full
