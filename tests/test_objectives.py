"""Tests for objectives/: MLM, causal LM and MAE losses against NumPy, BERT host masking
statistics, packing isolation at the loss level, and the FLOPs each objective counts."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from models.attention import attention_mask
from models.transformer import TextTransformer, TransformerConfig, transformer_flops_per_token
from models.vit import MAE, ViTConfig, mae_flops_per_image
from objectives import base, causal_lm, mae, mlm
from objectives.base import DataInfo, ModelDef

MLM = mlm.MaskedLM()
CAUSAL = causal_lm.CausalLM()
MAE_OBJ = mae.MaskedAutoencoder()
RNG = jax.random.key_data(jax.random.key(0))  # loss_fn takes raw key data

# Tiny text model; init_std 0.5 so logits are far from uniform and argmax is meaningful.
TEXT_CFG = TransformerConfig(vocab_size=32, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                             max_len=16, init_std=0.5)
MASK_ID = 3
# A packed batch: row 0 = segment 1 (3 tokens), segment 2 (3 tokens), 2 padding slots;
# row 1 = one segment filling the row.
SEGS = np.array([[1, 1, 1, 2, 2, 2, 0, 0], [1] * 8], np.int32)
POS = np.array([[0, 1, 2, 0, 1, 2, 0, 0], list(range(8))], np.int32)
TOKENS = np.array([[5, 6, 7, 8, 9, 10, 0, 0], [11, 12, 13, 14, 15, 16, 17, 18]], np.int32)
# MLM prediction slots (K = 3): row 0 has 2 real slots and a padding slot (weight 0).
MASKED_POS = np.array([[1, 4, 0], [0, 3, 7]], np.int32)
MASKED_W = np.array([[1, 1, 0], [1, 1, 1]], np.float32)

VIT_CFG = ViTConfig(image_size=(16, 16), patch_size=(4, 4), channels=3, d_model=16,
                    num_layers=1, num_heads=2, d_ff=32, dec_d_model=8, dec_layers=1,
                    dec_heads=2, dec_d_ff=16)


def _config(**objective) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"objective": objective})


def _mlm_config(whole_word=False):
  return _config(mask_rate=0.15, replace_mask=0.8, replace_random=0.1, whole_word=whole_word)


def _mae_config(mask_ratio=0.75, norm_pix_loss=True):
  return _config(mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)


def _split(module):
  """(ModelDef, params as a pure nested dict), the way the trainer holds a model."""
  graphdef, state = nnx.split(module, nnx.Param)
  return ModelDef(graphdef), nnx.to_pure_dict(state)


def _jit_loss(objective, model, config):
  return jax.jit(functools.partial(objective.loss_fn, model=model, config=config))


# --- NumPy references ------------------------------------------------------------------


def _np_xent(logits, targets):
  """Per-position softmax cross-entropy in float64."""
  logits = np.asarray(logits, np.float64)
  top = logits.max(-1, keepdims=True)
  logz = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
  return logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def _np_wmean(values, weights):
  return float((values * weights).sum() / weights.sum())


def _np_logits(params, hidden):
  """Tied-embedding output layer: hidden @ table.T + bias."""
  table = np.asarray(params["embed"]["table"], np.float64)
  return np.asarray(hidden, np.float64) @ table.T + np.asarray(params["logits_bias"])


def _np_patchify(images, p):
  """(B, H, W, C) -> (B, N, p * p * C), row-major grid, each patch flattened as (p, p, C)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text():
  """Tiny TextTransformer (with a random logits bias), its hidden-state fns per mask kind
  and jitted MLM / causal-LM losses, each compiled once."""
  with nnx.use_eager_sharding(False):
    model, params = _split(TextTransformer(TEXT_CFG, rngs=nnx.Rngs(0)))
  params["logits_bias"] = jnp.asarray(
      np.random.default_rng(1).normal(size=TEXT_CFG.vocab_size), jnp.float32)

  def hidden_fn(kind):
    return jax.jit(lambda p, tokens, segs, pos: model.bind(p)(
        tokens, mask=attention_mask(kind, segment_ids=segs), positions=pos))

  return {"model": model, "params": params,
          "hidden": {k: hidden_fn(k) for k in ("bidirectional", "causal")},
          "mlm": _jit_loss(MLM, model, _mlm_config()),
          "causal": _jit_loss(CAUSAL, model, _config())}


def _mlm_batch(tokens, masked_ids=None, weights=MASKED_W):
  """Hand MLM batch: the tokens at the real (not padding) slots' positions -> [MASK]."""
  inputs = tokens.copy()
  rows, slots = np.nonzero(MASKED_W)
  inputs[rows, MASKED_POS[rows, slots]] = MASK_ID
  inputs[SEGS == 0] = 0
  if masked_ids is None:
    masked_ids = np.take_along_axis(tokens, MASKED_POS, 1)
  return {"inputs": inputs, "segment_ids": SEGS, "positions": POS,
          "masked_positions": MASKED_POS, "masked_ids": masked_ids.astype(np.int32),
          "masked_weights": weights}


def _causal_batch(tokens):
  return {"tokens": tokens, "segment_ids": SEGS, "positions": POS}


# --- MLM loss ----------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [[1.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
def test_mlm_loss_matches_numpy_by_hand(weights):
  """token_loss is the weighted mean of log-softmax cross-entropy and of argmax hits; a
  zero-weight (padding) slot counts for nothing however wrong it is."""
  logits = np.array([[[2.0, 0.0, 0.0, 0.0],    # target 0: correct
                      [0.0, 1.0, 0.0, 3.0],    # target 1: wrong (argmax 3)
                      [0.0, 0.0, 9.0, 0.0]]])  # padding slot, target 0: very wrong
  targets, w = np.array([[0, 1, 0]]), np.array([weights])
  ce = np.array([np.log(np.exp(2) + 3) - 2, np.log(2 + np.e + np.exp(3)) - 1, 0.0])
  want_loss = (ce * w[0]).sum() / w.sum()
  want_acc = w[0, 0] / w.sum()
  loss, acc = base.token_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(w))
  np.testing.assert_allclose([loss, acc], [want_loss, want_acc], rtol=1e-6)
  loss0, acc0 = base.token_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros((1, 3)))
  assert float(loss0) == 0.0 and float(acc0) == 0.0


def test_mlm_loss_fn_matches_numpy(text):
  """MaskedLM.loss_fn = cross-entropy of tied-embedding logits gathered at masked_positions
  (model hidden states, NumPy gather + logits + softmax), weighted by masked_weights."""
  params, batch = text["params"], _mlm_batch(TOKENS)
  hidden = np.asarray(text["hidden"]["bidirectional"](
      params, batch["inputs"], SEGS, POS), np.float64)
  logits = _np_logits(params, np.take_along_axis(hidden, MASKED_POS[..., None], 1))
  # Make accuracy non-trivial: some targets are the argmax (incl. the weight-0 slot).
  argmax = logits.argmax(-1)
  targets = (argmax + np.array([[0, 1, 0], [0, 2, 5]])) % TEXT_CFG.vocab_size
  want_loss = _np_wmean(_np_xent(logits, targets), MASKED_W)
  want_acc = _np_wmean((argmax == targets).astype(float), MASKED_W)
  assert 0 < want_acc < 1
  loss, metrics = text["mlm"](params, _mlm_batch(TOKENS, masked_ids=targets), RNG)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["mlm_accuracy"], want_acc, rtol=1e-6)


# --- BERT host masking -------------------------------------------------------------------

VOCAB, SPECIAL, LONG = 50, (0, 1, 2, MASK_ID), 512  # pad, [CLS], [SEP], [MASK]
N_DRAWS = 200


def _long_example():
  """Two packed segments ([CLS] ... [SEP]) then padding; words of 1-4 pieces."""
  rng = np.random.default_rng(0)
  segs = np.array([1] * 250 + [2] * 200 + [0] * 62, np.int32)
  tokens = rng.integers(len(SPECIAL), VOCAB, LONG).astype(np.int32)
  tokens[[0, 250]], tokens[[249, 449]], tokens[segs == 0] = 1, 2, 0
  word_start = np.zeros(LONG, bool)
  word_start[np.cumsum(np.resize([1, 2, 3, 4], LONG))[:-1].clip(max=LONG - 1)] = True
  word_start[0] = True
  specials = np.isin(tokens, SPECIAL)
  word_start |= specials | np.concatenate([[False], specials[:-1]])  # specials stand alone
  pos = np.concatenate([np.arange(250), np.arange(200), np.zeros(62, int)]).astype(np.int32)
  return {"tokens": tokens, "segment_ids": segs, "positions": pos, "word_start": word_start}


EXAMPLE = _long_example()
CANDIDATE = (EXAMPLE["segment_ids"] > 0) & ~np.isin(EXAMPLE["tokens"], SPECIAL)


def _masking(whole_word):
  info = DataInfo(seq_len=LONG, vocab_size=VOCAB, mask_id=MASK_ID, special_ids=SPECIAL)
  return MLM.host_transform(_mlm_config(whole_word), info)


def _draw(whole_word, seed):
  example = {k: v.copy() for k, v in EXAMPLE.items()}
  return _masking(whole_word).random_map(example, np.random.default_rng(seed))


def _selected(out):
  return out["masked_positions"][out["masked_weights"] > 0]


@pytest.fixture(scope="module", params=[False, True], ids=["token", "whole_word"])
def draws(request):
  return request.param, [_draw(request.param, seed) for seed in range(N_DRAWS)]


def test_mlm_masking_outputs_are_consistent(draws):
  """Every draw: only non-special, non-padding tokens are chosen, at most once; masked_ids
  are the original tokens there; unused slots have weight 0; other inputs are untouched;
  random replacements are ordinary vocabulary tokens."""
  _, outs = draws
  slots = mlm.num_predictions(LONG, 0.15)
  for out in outs:
    pos, w = out["masked_positions"], out["masked_weights"]
    n = int(w.sum())
    assert pos.shape == w.shape == out["masked_ids"].shape == (slots,)
    np.testing.assert_array_equal(w, np.arange(slots) < n)
    chosen = pos[:n]
    assert len(np.unique(chosen)) == n and CANDIDATE[chosen].all()
    np.testing.assert_array_equal(out["masked_ids"][:n], EXAMPLE["tokens"][chosen])
    assert not out["masked_ids"][n:].any() and not pos[n:].any()
    untouched = np.ones(LONG, bool)
    untouched[chosen] = False
    np.testing.assert_array_equal(out["inputs"][untouched], EXAMPLE["tokens"][untouched])
    replaced = out["inputs"][chosen]
    assert ((replaced == MASK_ID) | ~np.isin(replaced, SPECIAL)).all()
    assert (replaced < VOCAB).all()
    for key in ("segment_ids", "positions"):
      np.testing.assert_array_equal(out[key], EXAMPLE[key])


def test_mlm_masking_rates(draws):
  """~mask_rate of the candidates are chosen, each candidate sometimes; of those ~80% become
  [MASK], ~10% a random token, ~10% stay (plus random draws that hit the original)."""
  _, outs = draws
  chosen = np.concatenate([_selected(o) for o in outs])
  rate = len(chosen) / (N_DRAWS * CANDIDATE.sum())
  assert abs(rate - 0.15) < 0.005, rate
  assert set(chosen) == set(np.flatnonzero(CANDIDATE))
  inputs = np.concatenate([o["inputs"][_selected(o)] for o in outs])
  original = EXAMPLE["tokens"][chosen]
  to_mask = np.mean(inputs == MASK_ID)
  to_random = np.mean((inputs != MASK_ID) & (inputs != original))
  kept = np.mean(inputs == original)
  hit = 0.1 / (VOCAB - len(SPECIAL))  # a random replacement equal to the original token
  np.testing.assert_allclose([to_mask, to_random, kept], [0.8, 0.1 - hit, 0.1 + hit],
                             atol=0.015)


def test_mlm_whole_word_masking_takes_whole_words(draws):
  """whole_word=True chooses every piece of a word or none of it; token masking does split
  words (so the check can fail)."""
  whole_word, outs = draws
  words = np.cumsum(EXAMPLE["word_start"]) - 1
  partial = 0
  for out in outs:
    hit = np.zeros(LONG, bool)
    hit[_selected(out)] = True
    per_word = np.bincount(words, weights=hit)
    size = np.bincount(words, weights=CANDIDATE)
    partial += int(((per_word > 0) & (per_word < size)).sum())
  if whole_word:
    assert partial == 0
  else:
    assert partial > N_DRAWS


@pytest.mark.parametrize("whole_word", [False, True])
def test_mlm_masking_is_deterministic_in_the_seed(whole_word):
  """The same seed gives identical outputs; another seed different positions."""
  a, b, c = _draw(whole_word, 7), _draw(whole_word, 7), _draw(whole_word, 8)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["masked_positions"], c["masked_positions"])


# --- causal LM ---------------------------------------------------------------------------

WANT_TARGETS = np.array([[6, 7, 8, 9, 10, 0, 0, 0], [12, 13, 14, 15, 16, 17, 18, 0]])
WANT_WEIGHTS = np.array([[1, 1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]], np.float32)


def test_next_token_targets_on_packed_batch():
  """Targets are the next token; weight 0 at each segment's last token, the row's last
  position and padding."""
  targets, weights = causal_lm.next_token_targets(jnp.asarray(TOKENS), jnp.asarray(SEGS))
  np.testing.assert_array_equal(weights, WANT_WEIGHTS)
  np.testing.assert_array_equal(np.asarray(targets) * WANT_WEIGHTS,
                                WANT_TARGETS * WANT_WEIGHTS)


def test_causal_loss_fn_matches_numpy(text):
  """CausalLM.loss_fn = NumPy cross-entropy of the causal model's logits against the hand
  targets and weights; accuracy and perplexity agree too."""
  params = text["params"]
  hidden = text["hidden"]["causal"](params, TOKENS, SEGS, POS)
  logits = _np_logits(params, hidden)
  want_loss = _np_wmean(_np_xent(logits, WANT_TARGETS), WANT_WEIGHTS)
  want_acc = _np_wmean((logits.argmax(-1) == WANT_TARGETS).astype(float), WANT_WEIGHTS)
  loss, metrics = text["causal"](params, _causal_batch(TOKENS), RNG)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], want_acc, rtol=1e-6)
  np.testing.assert_allclose(metrics["perplexity"], np.exp(want_loss), rtol=1e-5)


# --- packing isolation at the loss level -------------------------------------------------


def _segment_only(targets_fn, segment):
  """next_token_targets with the weights of every other segment zeroed."""
  def restricted(tokens, segment_ids):
    targets, weights = targets_fn(tokens, segment_ids)
    return targets, weights * (segment_ids == segment)
  return restricted


@pytest.fixture(scope="module")
def segment_loss(text):
  """(name, segment) -> (tokens -> loss over that segment's predictions only)."""
  params, slot_segment = text["params"], np.take_along_axis(SEGS, MASKED_POS, 1)
  losses = {}
  for seg in (1, 2):
    weights = MASKED_W * (slot_segment == seg)
    losses["mlm", seg] = lambda t, w=weights: float(
        text["mlm"](params, _mlm_batch(t, weights=w), RNG)[0])
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(causal_lm, "next_token_targets",
                    _segment_only(causal_lm.next_token_targets, seg))
      causal = _jit_loss(CAUSAL, text["model"], _config()).lower(
          params, _causal_batch(TOKENS), RNG).compile()  # traced under the patch, never again
    losses["causal_lm", seg] = lambda t, f=causal: float(f(params, _causal_batch(t), RNG)[0])
  return losses


SPAN = {1: slice(0, 3), 2: slice(3, 6)}  # row 0's segments; positions 0 and 3 are unmasked


@pytest.mark.parametrize("segment", [1, 2])
@pytest.mark.parametrize("name", ["mlm", "causal_lm"])
def test_loss_of_a_segment_ignores_other_packed_segments(segment_loss, name, segment):
  """The loss over one segment's predictions is unchanged when the other segment's tokens
  (same row, before or after it) change, and does change when a token of its own changes."""
  loss = segment_loss[name, segment]
  before = loss(TOKENS)
  other_segment = TOKENS.copy()
  other_segment[0, SPAN[3 - segment]] = [20, 21, 22]
  np.testing.assert_allclose(loss(other_segment), before, rtol=1e-6)
  same_segment = TOKENS.copy()
  same_segment[0, SPAN[segment].start] = 25
  assert abs(loss(same_segment) - before) > 1e-4


# --- MAE ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio, keep", [(0.75, 4), (0.6, 6), (0.5, 8), (0.9, 1)])
def test_random_keep_picks_distinct_patches(ratio, keep):
  """random_keep keeps exactly int(N * (1 - ratio)) distinct patches per image, the mask is
  1 exactly at the others, and images get different subsets."""
  b, n = 8, 16
  keep_idx, mask = mae.random_keep(jax.random.key(3), b, n, ratio)
  keep_idx, mask = np.asarray(keep_idx), np.asarray(mask)
  assert keep_idx.shape == (b, keep) and mask.shape == (b, n)
  want = np.ones((b, n))
  for row, idx in enumerate(keep_idx):
    assert len(set(idx)) == keep and (0 <= idx).all() and (idx < n).all()
    want[row, idx] = 0
  np.testing.assert_array_equal(mask, want)
  assert len({tuple(sorted(idx)) for idx in keep_idx}) > 1


def test_normalize_patches_matches_numpy():
  """Each patch is shifted to mean 0 and scaled by 1/sqrt(var + 1e-6)."""
  x = np.random.default_rng(0).normal(2.0, 3.0, (2, 3, 12))
  want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(mae.normalize_patches(jnp.asarray(x, jnp.float32)), want,
                             rtol=1e-5, atol=1e-5)


def test_masked_mse_by_hand():
  """Per-patch mean squared error, averaged over the hidden (mask 1) patches only."""
  pred = jnp.array([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])
  target = jnp.array([[[0.0, 0.0], [5.0, 5.0], [1.0, 3.0]]])
  # Per patch: 2.5, 25 (visible, ignored), 2.0.
  np.testing.assert_allclose(mae.masked_mse(pred, target, jnp.array([[1.0, 0.0, 1.0]])), 2.25)
  np.testing.assert_allclose(mae.masked_mse(pred, target, jnp.array([[0.0, 1.0, 0.0]])), 25.0)


@pytest.fixture(scope="module")
def mae_model():
  """Tiny MAE and a jitted encode -> decode given keep_idx."""
  with nnx.use_eager_sharding(False):
    model, params = _split(MAE(VIT_CFG, rngs=nnx.Rngs(0)))
  n = VIT_CFG.num_patches
  reconstruct = jax.jit(lambda p, patches, keep: model.bind(p).decode(
      model.bind(p).encode(patches, keep), keep, n))
  return model, params, reconstruct


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mae_loss_fn_matches_numpy(mae_model, norm_pix_loss):
  """MaskedAutoencoder.loss_fn = NumPy MSE over the masked patches (per-patch normalized
  targets if norm_pix_loss) of the model's reconstruction from the same rng's visible set."""
  model, params, reconstruct = mae_model
  images = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  patches = _np_patchify(images, 4)
  b, n, _ = patches.shape
  keep_idx, _ = mae.random_keep(jax.random.wrap_key_data(RNG), b, n, 0.75)
  keep_idx = np.asarray(keep_idx)
  pred = np.asarray(reconstruct(params, patches, keep_idx), np.float64)
  target = patches.astype(np.float64)
  if norm_pix_loss:
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(
        target.var(-1, keepdims=True) + 1e-6)
  hidden = np.ones((b, n))
  np.put_along_axis(hidden, keep_idx, 0.0, axis=1)
  want = _np_wmean(((pred - target) ** 2).mean(-1), hidden)
  config = _mae_config(norm_pix_loss=norm_pix_loss)
  loss, _ = _jit_loss(MAE_OBJ, model, config)(params, {"image": images}, RNG)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


# --- FLOPs -------------------------------------------------------------------------------


def test_mae_flops_count_only_visible_patches_in_the_encoder():
  """Masking 75% cuts exactly the encoder's (and decoder embedding's) work on the hidden
  patches; the count is mae_flops_per_image."""
  cfg, info = VIT_CFG, DataInfo(image_shape=(16, 16, 3))
  flops = {r: MAE_OBJ.forward_flops_per_example(_mae_config(r), info, cfg) for r in (0.0, 0.75)}
  for ratio, got in flops.items():
    assert got == mae_flops_per_image(cfg, ratio)
  d, f, p = cfg.d_model, cfg.d_ff, cfg.patch_dim

  def encoder(n):  # n patches + cls, each attending all tokens; by hand
    t = n + 1
    return n * 2 * p * d + t * cfg.num_layers * (8 * d * d + 4 * t * d + 4 * d * f)

  n, visible = cfg.num_patches, 4
  saved = encoder(n) - encoder(visible) + (n - visible) * 2 * d * cfg.dec_d_model
  assert flops[0.75] < flops[0.0]
  np.testing.assert_allclose(flops[0.0] - flops[0.75], saved, rtol=1e-12)


def test_mlm_flops_count_logits_only_at_prediction_slots():
  """MLM counts the vocabulary projection (+ head transform) at num_predictions slots, not
  at every token, so it is below the every-token count by the rest."""
  cfg = TransformerConfig(vocab_size=1000, num_layers=2, d_model=64, num_heads=4, d_ff=256,
                          norm="post", head_transform=True)
  seq_len, slots = 128, 20  # ceil(128 * 0.15)
  info = DataInfo(seq_len=seq_len, vocab_size=cfg.vocab_size)
  got = MLM.forward_flops_per_example(_mlm_config(), info, cfg)
  every_token = seq_len * transformer_flops_per_token(cfg, seq_len, with_logits=True)
  per_logit = 2 * cfg.d_model * cfg.vocab_size + 2 * cfg.d_model * cfg.d_model
  assert got < every_token
  np.testing.assert_allclose(every_token - got, (seq_len - slots) * per_logit, rtol=1e-12)
