"""The audio modality (real speech from the pocketsphinx sdist as log-mel clips), SSAST and
TERA: features against `transformers.audio_utils`, split and cache invariants, losses
against float64 NumPy on tiny cases, masking / alteration invariants, paper param counts
(abstract builds) and one short run per objective through `pretrain.main`.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from configs.ssast import get_config as get_ssast_config
from configs.tera import get_config as get_tera_config
from models.audio import SSAST, FrameTransformer, FrameTransformerConfig
from models.vit import ViTConfig
from objectives import ssast, tera
from objectives.base import DataInfo
from pretrain import main as main_lib
from pretrain.data import audio, spoken_digits
from pretrain.data.pipeline import cache_dir
from pretrain.evaluation import tasks
from pretrain.registry import MODELS
from pretrain.steps import RECONSTRUCTION_EXAMPLES
from pretrain.train import read_metrics
from helpers import build, np_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DATA = dict(source="pocketsphinx_speech", sample_rate=16000, mel_bins=32, clip_frames=64,
                 window_ms=25.0, hop_ms=10.0, cache_dir="")
CACHE = cache_dir(ml_collections.ConfigDict(TINY_DATA))


@pytest.fixture(scope="module")
def recordings():
  return audio.read_recordings(CACHE)


# --- data ----------------------------------------------------------------------------------


def test_raw_files_are_16_khz_16_bit_little_endian_mono(recordings):
  """Speech is low-pass: neighbouring samples are close when the bytes are read in the
  right order. Read big-endian, the same bytes give a rough, noise-like signal."""
  for name in (n for n in audio.RECORDINGS if n.endswith(".raw")):
    x, rate = recordings[name]
    assert rate == 16000 and x.dtype == np.float32 and np.abs(x).max() <= 1.0
    wrong = np.frombuffer((x * 32768).astype("<i2").tobytes(), ">i2") / 32768.0
    roughness = lambda s: np.abs(np.diff(s)).mean() / np.abs(s).mean()
    assert roughness(x) < 0.6 < 0.85 < roughness(wrong), name
  # Every .wav is read at its header's rate: all 16 kHz mono.
  assert {r for _, r in recordings.values()} == {16000}
  assert sum(len(x) for x, _ in recordings.values()) / 16000 == pytest.approx(55.7, abs=0.1)


@pytest.mark.parametrize("mel_bins,window_ms,hop_ms", [(80, 25.0, 10.0), (32, 32.0, 16.0)])
def test_log_mel_matches_transformers_audio_utils(recordings, mel_bins, window_ms, hop_ms):
  win, hop, n_fft = audio.frame_sizes(16000, window_ms, hop_ms)
  filters = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=mel_bins,
                            min_frequency=0.0, max_frequency=8000.0, sampling_rate=16000,
                            norm=None, mel_scale="htk")
  np.testing.assert_allclose(audio.mel_filters(n_fft // 2 + 1, mel_bins, 16000), filters,
                             atol=1e-12)
  for name in ("goforward.raw", audio.HELDOUT[0]):
    x = recordings[name][0]
    ours = audio.log_mel(x, 16000, window_ms, hop_ms, mel_bins)
    theirs = spectrogram(x.astype(np.float64), window_function(win, "hann"), frame_length=win,
                         hop_length=hop, fft_length=n_fft, power=2.0, center=False,
                         mel_filters=filters, mel_floor=audio.LOG_FLOOR, log_mel="log",
                         dtype=np.float64).T
    assert ours.shape == theirs.shape == (1 + (len(x) - win) // hop, mel_bins)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_resampling_keeps_a_tone_at_its_frequency():
  t = np.arange(16000) / 16000
  down = audio.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 16000, 8000)
  assert down.shape == (8000,)
  np.testing.assert_allclose(down, np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000),
                             atol=1e-4)


@pytest.fixture(scope="module")
def tiny_clips():
  cfg = ml_collections.ConfigDict(TINY_DATA)
  return {split: audio.build_audio_clips(cfg, split, CACHE)
          for split in ("train", "validation")}


def test_clips_have_static_shapes_and_held_out_recordings_are_disjoint(tiny_clips):
  train, validation = tiny_clips["train"], tiny_clips["validation"]
  example = train[3]
  assert example["spectrogram"].shape == (64, 32) and example["spectrogram"].dtype == np.float32
  assert example["label"].dtype == np.int32
  held = {audio.RECORDINGS.index(n) for n in audio.HELDOUT}
  assert set(validation.labels.tolist()) == held
  assert set(train.labels.tolist()) == set(range(len(audio.RECORDINGS))) - held
  # No clip appears in both splits; the training clips are standardised.
  flat = lambda s: {c.tobytes() for c in s.spectrograms}
  assert not flat(train) & flat(validation)
  assert abs(train.spectrograms.mean()) < 0.2 and 0.8 < train.spectrograms.std() < 1.2
  # 50%-overlapping clips: the second half of a clip is the first half of the next one.
  same = train.labels[:-1] == train.labels[1:]
  np.testing.assert_array_equal(train.spectrograms[:-1][same][:, 32:],
                                train.spectrograms[1:][same][:, :32])


def test_clips_are_deterministic_and_cached_by_settings(recordings, tiny_clips):
  """The cached arrays are what computing them again gives; other settings, other clips."""
  settings = dict(sample_rate=16000, mel_bins=32, clip_frames=64, window_ms=25.0, hop_ms=10.0)
  fresh = audio.compute_clips(recordings, settings)
  np.testing.assert_array_equal(fresh["train_spectrogram"], tiny_clips["train"].spectrograms)
  np.testing.assert_array_equal(fresh["validation_label"], tiny_clips["validation"].labels)
  other = audio.compute_clips(recordings, {**settings, "mel_bins": 16, "clip_frames": 32})
  assert other["train_spectrogram"].shape[1:] == (32, 16)


def test_spoken_digits_task_is_balanced_split_by_voice_and_learnable(tiny_clips):
  """Exact labels by construction; test voices never speak a training example; a
  nearest-centroid classifier on time-averaged log-mel features already beats chance
  across voices, so the labels are about the audio."""
  data = spoken_digits.spoken_digits(CACHE)
  test = spoken_digits.is_test_speaker(data["speaker"])
  assert not set(data["speaker"][test]) & set(data["speaker"][~test]) and test.mean() == 0.25
  task = tasks.spoken_digits(CACHE, 200, 100)
  assert task.modality == "audio" and len(task.classes) == 10
  assert np.bincount(task.train_labels).tolist() == [20] * 10
  assert np.bincount(task.test_labels).tolist() == [10] * 10
  cfg = ml_collections.ConfigDict(TINY_DATA)
  embed = lambda w: audio.task_clips(w / 32768.0, 16000, cfg, CACHE).mean(1)
  train, test_x = embed(task.train_inputs), embed(task.test_inputs)
  assert train.shape == (200, 32)
  centroids = np.stack([train[task.train_labels == c].mean(0) for c in range(10)])
  guess = np.argmin(((test_x[:, None] - centroids) ** 2).sum(-1), 1)
  assert (guess == task.test_labels).mean() > 0.3


# --- SSAST ---------------------------------------------------------------------------------

SSAST_TINY = ViTConfig(image_size=(8, 8), patch_size=(4, 2), channels=1, d_model=16,
                       num_layers=1, num_heads=2, d_ff=32, pos_emb="learned")


def _np_patchify(spec, patch):
  """(B, T, F) -> (B, N, pt * pf) row-major over the (T / pt, F / pf) grid, by hand."""
  b, t, f = spec.shape
  pt, pf = patch
  x = spec.reshape(b, t // pt, pt, f // pf, pf).transpose(0, 1, 3, 2, 4)
  return x.reshape(b, (t // pt) * (f // pf), pt * pf)


@pytest.fixture(scope="module")
def ssast_model():
  return build(SSAST, SSAST_TINY)


def test_ssast_loss_matches_numpy(ssast_model):
  """InfoNCE of each masked prediction against its clip's masked patches (dot products,
  no temperature) + 10 x MSE, against float64 NumPy."""
  model, params = ssast_model
  spec = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
  key = jax.random.key_data(jax.random.key(1))
  config = ml_collections.ConfigDict({"objective": dict(
      mask_patches=5, cluster_masking=False, discriminative_weight=1.0,
      generative_weight=10.0)})
  masked_idx, mask = ssast.random_masked(jax.random.wrap_key_data(key), 2, 8, 5)
  patches = _np_patchify(spec, (4, 2)).astype(np.float64)

  @jax.jit
  def run(p):  # one compile: the objective's loss and the heads on the same mask
    loss, metrics = ssast.SSAST().loss_fn(p, {"spectrogram": spec}, key, model=model,
                                          config=config)
    net = model.bind(p)
    tokens = net(jnp.asarray(patches, jnp.float32), mask)
    return loss, metrics, net.discriminative(tokens), net.generative(tokens)

  loss, metrics, disc, gen = run(params)
  disc, gen = (np.asarray(h, np.float64) for h in (disc, gen))
  masked_idx, mask = np.asarray(masked_idx), np.asarray(mask)
  assert (mask.sum(1) == 5).all()
  nce, mse = [], []
  for b in range(2):
    target = patches[b, masked_idx[b]]  # (M, P)
    scores = disc[b, masked_idx[b]] @ target.T  # (M, M): prediction i vs masked patch j
    nce.append(np_cross_entropy(scores, np.arange(5)).mean())
    mse.append(np.square(gen[b, masked_idx[b]] - target).mean())
  np.testing.assert_allclose(metrics["infonce"], np.mean(nce), rtol=1e-5)
  np.testing.assert_allclose(metrics["mse"], np.mean(mse), rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(nce) + 10 * np.mean(mse), rtol=1e-5)


def test_cluster_masking_masks_exactly_count_patches_in_clusters():
  """Exactly `count` distinct patches, fresh per rng; masked patches have far more masked
  grid neighbours than a uniform random subset of the same size gives them."""
  grid, count = (16, 8), 40
  cluster = jax.jit(ssast.cluster_masked, static_argnums=(1, 2, 3))
  idx, mask = map(np.asarray, cluster(jax.random.key(0), 64, grid, count))
  assert (mask.sum(1) == count).all()
  assert all(len(set(row)) == count and set(row) == set(np.flatnonzero(m))
             for row, m in zip(idx, mask))
  assert (np.asarray(cluster(jax.random.key(1), 64, grid, count)[1]) != mask).any()

  def masked_neighbours(m):
    m = m.reshape(-1, *grid)
    pad = np.pad(m, ((0, 0), (1, 1), (1, 1)))
    near = pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:]
    return (near * m).sum() / m.sum()

  uniform = np.asarray(ssast.random_masked(jax.random.key(0), 64, 128, count)[1])
  assert masked_neighbours(mask) > 2.5 > 1.6 > masked_neighbours(uniform)


def test_ssast_encoder_never_sees_masked_patches(ssast_model):
  """A masked patch is replaced by the mask embedding: changing its content changes no
  output; changing a visible patch does."""
  model, params = ssast_model
  encode = jax.jit(lambda p, x, m: model.bind(p)(x, m))
  patches = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 8)), jnp.float32)
  mask = jnp.zeros((1, 8)).at[0, 3].set(1.0)
  before = encode(params, patches, mask)
  np.testing.assert_array_equal(encode(params, patches.at[0, 3].add(5.0), mask), before)
  assert np.abs(np.asarray(encode(params, patches.at[0, 4].add(5.0), mask) - before)).max() > 1e-3


def test_ssast_paper_sizes_build_abstractly_with_the_paper_param_count():
  """SSAST §3 / Table 1: SSAST-Base, 89M params, patch- and frame-based alike (16x16 or
  2 x 128 patches: 256 values each, 512 of them)."""
  builder = MODELS.get("ssast")
  for variant in ("patch-base", "frame-base"):
    config = get_ssast_config(variant)
    cfg = builder.model_config(config.model, DataInfo(audio_shape=(1024, 128)))
    assert cfg.num_patches == 512 and cfg.patch_dim == 256
    with nnx.use_eager_sharding(False):
      abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
    total = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert abs(total / 89e6 - 1) < 0.02, (variant, total)


# --- TERA ----------------------------------------------------------------------------------


def _tera_objective(**overrides):
  return ml_collections.ConfigDict(dict(time_mask_proportion=0.15, time_mask_width=7,
                                        freq_mask_max_width=8, noise_proportion=0.15,
                                        noise_std=0.2) | overrides)


def test_tera_alterations_have_their_shapes_and_rates():
  spec = jnp.asarray(np.random.default_rng(2).normal(size=(600, 70, 40)) + 3.0, jnp.float32)
  alter = jax.jit(lambda key, s: tera.alter(key, s, _tera_objective()))
  x, altered = alter(jax.random.key(3), spec)
  # Deterministic in the rng; a new rng, new alterations.
  np.testing.assert_array_equal(alter(jax.random.key(3), spec)[0], x)
  assert (np.asarray(alter(jax.random.key(4), spec)[0]) != np.asarray(x)).any()
  x, altered, spec = map(np.asarray, (x, altered, spec))
  np.testing.assert_array_equal(x[~altered], spec[~altered])  # untouched where not altered
  noisy = altered.all((1, 2))  # noise alters every value; nothing else can (band <= 8 < 40)
  assert 0.1 < noisy.mean() < 0.2
  clean = np.flatnonzero(~noisy)
  band = altered.all(1)  # (B, F): the frequency band is altered in every frame
  for row in band[clean]:
    idx = np.flatnonzero(row)
    assert len(idx) <= 8 and (len(idx) == 0 or np.ptp(idx) == len(idx) - 1)
  # The time blocks of clean clips (1 = int(0.15 * 70 / 7) of 7 frames): all bins altered;
  # zeroed, replaced by other frames, or kept, 80/10/10 per clip.
  blocks = altered.all(2)
  assert (blocks[clean].sum(1) == 7).all()
  fate = []
  for b in clean:
    got, orig = (v[b][blocks[b]][:, ~band[b]] for v in (x, spec))
    fate.append("zero" if (got == 0).all() else "kept" if (got == orig).all() else "moved")
  shares = {f: fate.count(f) / len(fate) for f in ("zero", "moved", "kept")}
  assert abs(shares["zero"] - 0.8) < 0.06 and abs(shares["moved"] - 0.1) < 0.05, shares


TERA_TINY = FrameTransformerConfig(num_bins=8, d_model=16, num_layers=1, num_heads=2, d_ff=32)


def test_tera_loss_is_l1_on_the_altered_positions():
  model, params = build(FrameTransformer, TERA_TINY)
  spec = jnp.asarray(np.random.default_rng(5).normal(size=(3, 21, 8)), jnp.float32)
  key = jax.random.key_data(jax.random.key(6))
  config = ml_collections.ConfigDict({"objective": _tera_objective(freq_mask_max_width=3)})

  @jax.jit
  def run(p):  # one compile: the objective's loss and the model on the same alteration
    loss, _ = tera.TERA().loss_fn(p, {"spectrogram": spec}, key, model=model, config=config)
    x, altered = tera.alter(jax.random.wrap_key_data(key), spec, config.objective)
    net = model.bind(p)
    return loss, net.reconstruct(net(x)), altered

  loss, pred, altered = run(params)
  pred, altered = np.asarray(pred, np.float64), np.asarray(altered)
  assert 0 < altered.sum() < altered.size
  want = np.abs(pred - np.asarray(spec, np.float64))[altered].mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)


@pytest.mark.parametrize("variant,paper", [("base", 21.3e6), ("medium", 42.6e6),
                                           ("large", 85.1e6)])
def test_tera_paper_sizes_build_abstractly_with_the_paper_param_count(variant, paper):
  """TERA Table I (base / medium / large: 3 / 6 / 12 layers): the encoder's params, without
  the pretraining-only prediction head."""
  builder = MODELS.get("frame_transformer")
  config = get_tera_config(variant)
  cfg = builder.model_config(config.model, DataInfo(audio_shape=(1024, 80)))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  encoder = sum(x.size for name, sub in params.items() if not name.startswith("head_")
                for x in jax.tree.leaves(sub))
  assert abs(encoder / paper - 1) < 0.02, encoder


# --- through pretrain.main -----------------------------------------------------------------


@pytest.mark.parametrize("recipe,evaluators", [("ssast", ""), ("tera", "knn")])
def test_tiny_recipe_trains_through_main_and_draws_spectrograms(tmp_path, recipe, evaluators):
  """TERA's run also scores its features with kNN on spoken digits."""
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}.py:tiny", f"--workdir={tmp_path}",
                        f"--config.evaluate.evaluators={evaluators}",
                        "--config.evaluate.train_examples=100",
                        "--config.evaluate.test_examples=50",
                        "--config.train.steps=12", "--config.train.log_every=2",
                        "--config.optim.warmup_steps=2", "--config.train.eval_every=12",
                        "--config.train.eval_steps=1", "--config.train.checkpoint_every=12",
                        "--config.model.num_layers=1",
                        "--config.train.peak_flops_per_device=1e11"]) == 0
  records = read_metrics(str(tmp_path))
  curve = [r["loss"] for r in records if "loss" in r]
  assert np.mean(curve[-2:]) < 0.9 * np.mean(curve[:2]), curve
  assert any("eval_loss" in r for r in records)
  if evaluators:
    assert any("knn_spoken_digits_accuracy" in r for r in records)
  grid = np.asarray(Image.open(tmp_path / "reconstructions" / "step_12.png"))
  # Spectrograms drawn (mel_bins, clip_frames) = (32, 64): 3 per held-out clip.
  assert grid.shape == (RECONSTRUCTION_EXAMPLES * 33 + 1, 3 * 65 + 1)


@pytest.mark.parametrize("recipe,arg,expected", [
    ("ssast", "objective.mask_patches=1", "objective.mask_patches=1: must be in [2, 32)"),
    ("ssast", "model.patch_size=(5,8)", "model.patch_size=(5, 8): must be 2 positive sizes"),
    ("tera", "data.sample_rate=44100", "data.sample_rate=44100: must be in [1000, 16000]"),
    ("tera", "objective.freq_mask_max_width=40", "must be in [0, data.mel_bins=32)"),
])
def test_bad_settings_are_one_line_errors_before_work(tmp_path, capsys, recipe, arg, expected):
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}.py:tiny",
                        f"--workdir={tmp_path}/run", f"--config.{arg}"]) == 2
  err = capsys.readouterr().err
  assert expected in err and err.count("\n") == 1, err
  assert not (tmp_path / "run").exists()
