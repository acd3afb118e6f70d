"""Real time series offline, cut into standardised forecasting windows (TTM pretraining data).

`data.source=statsmodels_series`: the public-domain datasets statsmodels ships as CSV files
in its wheel, read straight from the archive (fetched with `pypi.fetch`, never installed,
so scipy/pandas/patsy never come along). Each column is one univariate series (TTM
pretrains channel-independently), tagged with its sampling resolution:

  sunspots    yearly     1700-2008, 309 values   NOAA NGDC yearly sunspot numbers
  nile        yearly     1871-1970, 100 values   Nile flow at Aswan (Cobb 1978)
  co2         weekly     1958-2001, 2284 values  Mauna Loa CO2, CDIAC SIO flask data (59
                                                 missing weeks linearly interpolated)
  elnino      monthly    1950-2010, 732 values   Pacific sea surface temperature, NOAA CPC
  elec_equip  monthly    1995-2016, 257 values   Euro-area electrical equipment turnover
                                                 index, Eurostat
  macrodata   quarterly  1959Q1-2009Q3, 203 values each, 12 series (real GDP, consumption,
                                                 investment, ..., inflation, real interest
                                                 rate): US FRED and BLS data
statsmodels' `COPYRIGHT` strings mark every one of them public domain.

Windows: `context_len` values followed by `horizon` values, every offset (stride 1). The
last `HELDOUT_FRACTION` of each series is held out: training windows end before it,
validation windows forecast inside it (their context may reach back into the training
part, as in any time-based split). Both parts of a window are standardised with the
context's mean and standard deviation only (RevIN, Kim et al. 2022; TTM's per-window
scaling), so the forecast target never leaks into the input's scale. Every window counts
once, so long series weigh more: with context 32 + horizon 8, co2 gives 1788 of the 4227
training windows, nile 41.
"""
from __future__ import annotations

import csv
import io
import zipfile

import numpy as np

from pretrain.data.info import DataInfo
from pretrain.data import pypi

STATSMODELS = "statsmodels==0.14.5"
# The wheel pip picks on linux x86_64 CPython 3.11 (the CSVs are the same in every wheel).
STATSMODELS_WHEEL = ("statsmodels-0.14.5-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_"
                     "x86_64.manylinux_2_28_x86_64.whl")
SERIES_SOURCES = ("statsmodels_series",)
# TTM's resolution prefix vocabulary, here the resolutions these series come in.
RESOLUTIONS = ("weekly", "monthly", "quarterly", "yearly")
HELDOUT_FRACTION = 0.2
# Exact coarsenings (resolution -> coarser resolution: values per block) for
# `data.downsample`; weekly has none (a month is not a whole number of weeks).
DOWNSAMPLE = {("monthly", "quarterly"): 3, ("monthly", "yearly"): 12,
              ("quarterly", "yearly"): 4}
SCALE_EPS = 1e-5  # Added to the context variance: a flat context scales by ~1, not by 0.
_MACRO_COLUMNS = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1",
                  "tbilrate", "unemp", "pop", "infl", "realint")
_SPLITS = ("train", "validation")


def _csv_rows(wheel: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
  text = wheel.read(f"statsmodels/datasets/{name}.csv").decode("utf-8")
  return list(csv.DictReader(io.StringIO(text)))


def _floats(values: list[str]) -> np.ndarray:
  """Strings -> float64, gaps ('') filled by linear interpolation between neighbours."""
  x = np.array([float(v) if v.strip() else np.nan for v in values])
  missing = np.isnan(x)
  if missing.any():
    idx = np.arange(len(x))
    x[missing] = np.interp(idx[missing], idx[~missing], x[~missing])
  return x


def read_statsmodels_series(cache_dir: str) -> dict[str, tuple[str, np.ndarray]]:
  """{name: (resolution, float64 values in time order)} for the series listed above."""
  path = pypi.fetch(cache_dir, STATSMODELS, STATSMODELS_WHEEL, source=False)
  with zipfile.ZipFile(path) as wheel:
    sunspots = _csv_rows(wheel, "sunspots/sunspots")
    nile = _csv_rows(wheel, "nile/nile")
    co2 = _csv_rows(wheel, "co2/co2")
    elnino = _csv_rows(wheel, "elnino/elnino")
    elec = _csv_rows(wheel, "elec_equip/elec_equip")
    macro = _csv_rows(wheel, "macrodata/macrodata")
  months = list(elnino[0])[1:]  # YEAR, JAN..DEC: one row per year
  series = {
      "sunspots": ("yearly", _floats([r["SUNACTIVITY"] for r in sunspots])),
      "nile": ("yearly", _floats([r["volume"] for r in nile])),
      "co2": ("weekly", _floats([r["co2"] for r in co2])),
      "elnino": ("monthly", _floats([r[m] for r in elnino for m in months])),
      "elec_equip": ("monthly", _floats([list(r.values())[1] for r in elec])),
  }
  for column in _MACRO_COLUMNS:
    series[f"macrodata/{column}"] = ("quarterly", _floats([r[column] for r in macro]))
  return series


def window_starts(length: int, context_len: int, horizon: int, split: str,
                  heldout_fraction: float = HELDOUT_FRACTION) -> np.ndarray:
  """Start offsets of the `split` windows of a series of `length` values (see above)."""
  if split not in _SPLITS:
    raise ValueError(f"unknown series split {split!r}; valid: {', '.join(_SPLITS)}")
  cut = _cut(length, heldout_fraction)
  window = context_len + horizon
  if split == "train":
    return np.arange(0, cut - window + 1)
  return np.arange(max(cut - context_len, 0), length - window + 1)


def standardize(window: np.ndarray, context_len: int) -> np.ndarray:
  """(..., context_len + horizon) -> the same scaled by the context's mean and std."""
  context = window[..., :context_len]
  mean = context.mean(-1, keepdims=True)
  std = np.sqrt(context.var(-1, keepdims=True) + SCALE_EPS)
  return (window - mean) / std


class SeriesWindows:
  """Random-access standardised windows: context float32 (L,), target float32 (H,) and
  resolution int32 () (an index into `RESOLUTIONS`)."""

  def __init__(self, series: dict[str, tuple[str, np.ndarray]], context_len: int,
               horizon: int, split: str, extra_train: dict | None = None):
    """`extra_train`: series (like `series`) all of whose windows are training windows,
    e.g. `downsampled_training_parts`; train split only."""
    if extra_train and split != "train":
      raise ValueError(f"extra_train windows are training windows, not {split!r} ones")
    windows, resolutions = [], []
    for group, heldout in ((series, HELDOUT_FRACTION), (extra_train or {}, 0.0)):
      for resolution, values in group.values():
        starts = window_starts(len(values), context_len, horizon, split, heldout)
        offsets = starts[:, None] + np.arange(context_len + horizon)
        windows.append(standardize(values[offsets], context_len))
        resolutions.append(np.full(len(starts), RESOLUTIONS.index(resolution), np.int32))
    self.windows = np.concatenate(windows).astype(np.float32)
    self.resolutions = np.concatenate(resolutions)
    self.context_len = context_len
    if not len(self.windows):
      raise ValueError(f"no series is long enough for a {split} window of data.context_len="
                       f"{context_len} + data.horizon={horizon}")

  def __len__(self) -> int:
    return len(self.windows)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    w = self.windows[i]
    return {"context": w[:self.context_len], "target": w[self.context_len:],
            "resolution": self.resolutions[i]}


def _cut(length: int, heldout_fraction: float) -> int:
  """Where the held-out tail of a series of `length` values starts."""
  return length - int(round(length * heldout_fraction))


def downsample(values: np.ndarray, factor: int) -> np.ndarray:
  """Means of consecutive blocks of `factor` values (a partial last block is dropped)."""
  n = len(values) // factor
  return values[:n * factor].reshape(n, factor).mean(1)


def downsampled_training_parts(series: dict[str, tuple[str, np.ndarray]]
                               ) -> dict[str, tuple[str, np.ndarray]]:
  """TTM's augmentation by downsampling: each series' training part (before its held-out
  cut, so nothing held out leaks) averaged to every coarser resolution in `DOWNSAMPLE`, e.g.
  monthly El Nino into quarterly and yearly means, under the coarser resolution's id."""
  out = {}
  for name, (resolution, values) in series.items():
    for (source, target), factor in DOWNSAMPLE.items():
      if source == resolution:
        train_part = values[:_cut(len(values), HELDOUT_FRACTION)]
        out[f"{name}@{target}"] = (target, downsample(train_part, factor))
  return out


def build_series_windows(data_cfg, split: str, cache_dir: str) -> SeriesWindows:
  if data_cfg.source not in SERIES_SOURCES:
    raise ValueError(f"unknown series source {data_cfg.source!r}; valid: "
                     f"{', '.join(SERIES_SOURCES)}")
  series = read_statsmodels_series(cache_dir)
  extra = downsampled_training_parts(series) if split == "train" and data_cfg.downsample else None
  return SeriesWindows(series, data_cfg.context_len, data_cfg.horizon, split, extra)


def data_info(data_cfg) -> DataInfo:
  """What a series model's shapes depend on: (context_len, horizon, resolution ids)."""
  return DataInfo(series_shape=(data_cfg.context_len, data_cfg.horizon, len(RESOLUTIONS)))


def example(info: DataInfo) -> dict[str, np.ndarray]:
  """One zero window of the right shapes (what `pretrain.aot` compiles for)."""
  context_len, horizon, _ = info.series_shape
  return {"context": np.zeros(context_len, np.float32),
          "target": np.zeros(horizon, np.float32), "resolution": np.int32(0)}
