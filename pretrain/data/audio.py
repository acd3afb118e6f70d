"""Real recorded speech offline, as fixed-length log-mel spectrogram clips (the `audio` modality).

`data.source=pocketsphinx_speech`: the test recordings shipped in the source distribution
of pocketsphinx 5.1.1 (CMU Sphinx; fetched with `pypi.fetch`, read member by member from
the tar.gz, never built or installed). All are 16 kHz, 16-bit, mono:

  librivox/sense_and_sensibility_01_austen_64kb-08{70,80,90}, -09{20,30}.wav   LibriVox
      readings of Austen's "Sense and Sensibility" (public domain), 24.7 s
  cards/00{1..5}.wav          playing cards read out ("ten of clubs", ...), 9.7 s
  forever/input_{2,4}_16k.wav 9.1 s
  goforward.raw, numbers.raw, something.raw, tidigits/dhd.2934z.raw   10.2 s

`.raw` files are headerless PCM: 16 kHz, 16-bit little-endian, mono (tests/test_audio.py
checks that reading them so gives speech-like, smooth spectra where big-endian does not).
Left out: the 8 kHz (vad/leak-test.wav) and 11.025 kHz (regression/chan3*) recordings,
whose band would stop below the others', and the deliberately malformed or empty fixtures
(awful, bad, evil, null .wav; vad/test-audio.raw is 0.45 s, shorter than any useful clip).

Held out by recording (no clip of them is trained on): librivox ...-0930.wav and
numbers.raw (7.3 s of 55.7 s).

Features, computed by our own NumPy code (tested against `transformers.audio_utils`):
frames of `data.window_ms` every `data.hop_ms` (no centering padding), a periodic Hann
window, the power spectrum over the next power-of-two FFT, `data.mel_bins` triangular HTK
mel filters from 0 Hz to Nyquist, natural log floored at 1e-10 (SSAST and TERA both feed
log mel filterbanks: 25 ms / 10 ms, 128 and 80 bins). The result is standardised with the
training recordings' global mean and std (SSAST normalises by dataset statistics too).
Each recording at `data.sample_rate` other than 16 kHz is FFT-resampled first.

Examples: clips of `data.clip_frames` frames, every `clip_frames // 2` frames (50%
overlap) of every recording long enough: {"spectrogram": float32 (clip_frames, mel_bins),
"label": int32 the recording's index in `RECORDINGS`}. The clips of one setting are cached
under `<cache>/audio/` keyed by every setting that changes them.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import wave

import numpy as np

from pretrain.data.info import DataInfo
from pretrain.data import pypi
from pretrain.data.modalities import MODALITIES, Modality
from pretrain.data.cache import cache_dir

POCKETSPHINX = "pocketsphinx==5.1.1"
POCKETSPHINX_SDIST = "pocketsphinx-5.1.1.tar.gz"
AUDIO_SOURCES = ("pocketsphinx_speech",)
RECORDED_RATE = 16000  # every recording below
_ROOT = "pocketsphinx-5.1.1/test/data/"
_LIBRIVOX = "librivox/sense_and_sensibility_01_austen_64kb-0{}.wav"
RECORDINGS = (*(_LIBRIVOX.format(n) for n in ("870", "880", "890", "920", "930")),
              *(f"cards/00{i}.wav" for i in range(1, 6)),
              "forever/input_2_16k.wav", "forever/input_4_16k.wav",
              "goforward.raw", "numbers.raw", "something.raw", "tidigits/dhd.2934z.raw")
HELDOUT = (_LIBRIVOX.format("930"), "numbers.raw")
LOG_FLOOR = 1e-10
FEATURE_FORMAT = 2  # Part of the cache key: bump it when the features' code changes.
_SPLITS = ("train", "validation")


def decode(name: str, data: bytes) -> tuple[np.ndarray, int]:
  """(float32 samples in [-1, 1), sample rate) of a .wav (stdlib `wave`) or a headerless
  16 kHz 16-bit little-endian mono .raw recording."""
  if name.endswith(".raw"):
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, RECORDED_RATE
  with wave.open(io.BytesIO(data)) as w:
    if w.getnchannels() != 1 or w.getsampwidth() != 2:
      raise ValueError(f"{name}: {w.getnchannels()} channels x {w.getsampwidth()} bytes; "
                       "only mono 16-bit is read")
    pcm = w.readframes(w.getnframes())
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, w.getframerate()


def read_recordings(cache_dir: str) -> dict[str, tuple[np.ndarray, int]]:
  """{name: (samples, rate)} for `RECORDINGS`, read from the pocketsphinx sdist."""
  path = pypi.fetch(cache_dir, POCKETSPHINX, POCKETSPHINX_SDIST, source=True)
  wanted = {_ROOT + name: name for name in RECORDINGS}
  out = {}
  with tarfile.open(path, "r:gz") as tar:
    for member in tar:  # one pass over the stream; only the wanted members are read
      if member.name in wanted:
        out[wanted[member.name]] = decode(member.name, tar.extractfile(member).read())
  missing = set(RECORDINGS) - set(out)
  if missing:
    raise ValueError(f"{path} lacks {sorted(missing)}")
  return out


def resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
  """Band-limited resampling by truncating (or zero-extending) the spectrum."""
  if rate == new_rate:
    return x
  n = int(round(len(x) * new_rate / rate))
  spectrum = np.fft.rfft(x.astype(np.float64))
  bins = n // 2 + 1
  spectrum = (spectrum[:bins] if bins <= len(spectrum)
              else np.pad(spectrum, (0, bins - len(spectrum))))
  return (np.fft.irfft(spectrum, n) * (n / len(x))).astype(np.float32)


def frame_sizes(sample_rate: int, window_ms: float, hop_ms: float) -> tuple[int, int, int]:
  """(window samples, hop samples, FFT length = next power of two >= window)."""
  win = int(round(sample_rate * window_ms / 1000))
  hop = int(round(sample_rate * hop_ms / 1000))
  return win, hop, 1 << (win - 1).bit_length()


def hz_to_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)  # HTK


def mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def mel_filters(num_bins: int, mel_bins: int, sample_rate: int) -> np.ndarray:
  """(num_bins, mel_bins) triangles, equally spaced on the HTK mel scale from 0 Hz to
  Nyquist, each rising from its left neighbour's centre to 1 at its own and falling to 0 at
  its right neighbour's (in Hz), unnormalised."""
  edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), mel_bins + 2))
  freqs = np.linspace(0.0, sample_rate // 2, num_bins)[:, None]
  left, centre, right = edges[:-2], edges[1:-1], edges[2:]
  rising = (freqs - left) / (centre - left)
  falling = (right - freqs) / (right - centre)
  return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(samples: np.ndarray, sample_rate: int, window_ms: float, hop_ms: float,
            mel_bins: int) -> np.ndarray:
  """float32 (frames, mel_bins) log mel power spectrogram (see the module docstring)."""
  win, hop, n_fft = frame_sizes(sample_rate, window_ms, hop_ms)
  frames = 1 + (len(samples) - win) // hop
  if frames < 1:
    return np.zeros((0, mel_bins), np.float32)
  x = samples.astype(np.float64)[np.arange(frames)[:, None] * hop + np.arange(win)]
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic
  power = np.abs(np.fft.rfft(x * hann, n_fft)) ** 2  # (frames, n_fft // 2 + 1)
  mel = power @ mel_filters(n_fft // 2 + 1, mel_bins, sample_rate)
  return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def validate(data_cfg) -> None:
  """ValueError naming a bad data.* audio setting (objectives call it before any work)."""
  rate = data_cfg.sample_rate
  if not 1000 <= rate <= RECORDED_RATE:
    raise ValueError(f"data.sample_rate={rate}: must be in [1000, {RECORDED_RATE}] (the "
                     "recordings are 16 kHz; higher rates would add an empty band)")
  if not 0 < data_cfg.hop_ms <= data_cfg.window_ms:
    raise ValueError(f"data.hop_ms={data_cfg.hop_ms}, data.window_ms={data_cfg.window_ms}: "
                     "need 0 < hop_ms <= window_ms")
  win, hop, n_fft = frame_sizes(rate, data_cfg.window_ms, data_cfg.hop_ms)
  if hop < 1:
    raise ValueError(f"data.hop_ms={data_cfg.hop_ms}: under one sample at {rate} Hz")
  if not 1 <= data_cfg.mel_bins <= n_fft // 2:
    raise ValueError(f"data.mel_bins={data_cfg.mel_bins}: must be in [1, {n_fft // 2}] for "
                     f"{data_cfg.window_ms} ms windows at {rate} Hz")
  if data_cfg.clip_frames < 1:
    raise ValueError(f"data.clip_frames={data_cfg.clip_frames}: must be >= 1")


def _settings(data_cfg) -> dict:
  return dict(sample_rate=data_cfg.sample_rate, mel_bins=data_cfg.mel_bins,
              window_ms=data_cfg.window_ms, hop_ms=data_cfg.hop_ms,
              clip_frames=data_cfg.clip_frames)


def clips(spectrogram: np.ndarray, clip_frames: int) -> np.ndarray:
  """(n, clip_frames, mel_bins): windows every clip_frames // 2 frames (none if too short)."""
  stride = max(clip_frames // 2, 1)
  starts = np.arange(0, len(spectrogram) - clip_frames + 1, stride)
  return spectrogram[starts[:, None] + np.arange(clip_frames)]


def compute_clips(recordings: dict[str, tuple[np.ndarray, int]], settings: dict
                  ) -> dict[str, np.ndarray]:
  """{"<split>_spectrogram", "<split>_label"} for both splits, standardised with the
  training recordings' mean and std."""
  feats = {name: log_mel(resample(x, rate, settings["sample_rate"]), settings["sample_rate"],
                         settings["window_ms"], settings["hop_ms"], settings["mel_bins"])
           for name, (x, rate) in recordings.items()}
  train_frames = np.concatenate([f for n, f in feats.items() if n not in HELDOUT])
  mean, std = train_frames.mean(), train_frames.std()
  out = {"mean": np.float32(mean), "std": np.float32(std)}
  for split in _SPLITS:
    names = [n for n in RECORDINGS if (n in HELDOUT) == (split == "validation")]
    cut = [clips((feats[n] - mean) / std, settings["clip_frames"]) for n in names]
    out[f"{split}_spectrogram"] = np.concatenate(cut).astype(np.float32)
    out[f"{split}_label"] = np.concatenate(
        [np.full(len(c), RECORDINGS.index(n), np.int32) for n, c in zip(names, cut)])
  return out


class AudioClips:
  """Random-access spectrogram clips of one split."""

  def __init__(self, spectrograms: np.ndarray, labels: np.ndarray):
    self.spectrograms, self.labels = spectrograms, labels

  def __len__(self) -> int:
    return len(self.spectrograms)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"spectrogram": self.spectrograms[i], "label": self.labels[i]}


def save_npz(path: str, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
  """Atomically: another process never sees a half-written file under `path`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    (np.savez_compressed if compressed else np.savez)(f, **arrays)
  os.replace(tmp, path)


def _cached_clips(data_cfg, cache_dir: str) -> dict[str, np.ndarray]:
  """compute_clips' arrays for `data_cfg`'s settings, from the cache or computed now."""
  if data_cfg.source not in AUDIO_SOURCES:
    raise ValueError(f"unknown audio source {data_cfg.source!r}; valid: "
                     f"{', '.join(AUDIO_SOURCES)}")
  settings = _settings(data_cfg)
  key = hashlib.sha256(json.dumps({**settings, "format": FEATURE_FORMAT},
                                  sort_keys=True).encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, "audio", f"pocketsphinx-{key}.npz")
  if not os.path.exists(path):
    save_npz(path, compute_clips(read_recordings(cache_dir), settings))
  with np.load(path, allow_pickle=False) as arrays:
    return dict(arrays)


def build_audio_clips(data_cfg, split: str, cache_dir: str) -> AudioClips:
  """The `split` clips, from the cache or computed (and cached) now."""
  if split not in _SPLITS:
    raise ValueError(f"unknown audio split {split!r}; valid: {', '.join(_SPLITS)}")
  arrays = _cached_clips(data_cfg, cache_dir)
  spectrograms, labels = arrays[f"{split}_spectrogram"], arrays[f"{split}_label"]
  if not len(spectrograms):
    raise ValueError(f"no {split} recording is long enough for a clip of data.clip_frames="
                     f"{data_cfg.clip_frames} frames")
  return AudioClips(spectrograms, labels)


def task_clips(waveforms: np.ndarray, rate: int, data_cfg, cache_dir: str) -> np.ndarray:
  """Waveforms (N, samples) at `rate` -> (N, clip_frames, mel_bins) float32 clips with the
  pretraining data's features and standardisation (a labelled task's inputs), each the
  centre clip_frames frames, padded at the end with the log floor if shorter."""
  stats = _cached_clips(data_cfg, cache_dir)
  out = []
  for x in waveforms:
    x = resample(np.asarray(x, np.float32), rate, data_cfg.sample_rate)
    feats = log_mel(x, data_cfg.sample_rate, data_cfg.window_ms, data_cfg.hop_ms,
                    data_cfg.mel_bins)
    start = max((len(feats) - data_cfg.clip_frames) // 2, 0)
    feats = feats[start:start + data_cfg.clip_frames]
    feats = np.pad(feats, ((0, data_cfg.clip_frames - len(feats)), (0, 0)),
                   constant_values=np.log(LOG_FLOOR))
    out.append((feats - stats["mean"]) / stats["std"])
  return np.stack(out).astype(np.float32)


def data_info(data_cfg) -> DataInfo:
  return DataInfo(audio_shape=(data_cfg.clip_frames, data_cfg.mel_bins))


class Audio(Modality):
  sources = AUDIO_SOURCES

  def build(self, config, objective):
    train, validation = (build_audio_clips(config.data, split, cache_dir(config.data))
                         for split in _SPLITS)
    return train, validation, data_info(config.data), None

  def abstract_info(self, config):
    return data_info(config.data)

  def abstract_example(self, info):
    return {"spectrogram": np.zeros(info.audio_shape, np.float32), "label": np.int32(0)}


MODALITIES.register("audio")(Audio())
