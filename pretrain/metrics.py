"""Metric sinks (console, metrics.jsonl, TensorBoard), throughput and MFU.

MFU = achieved model FLOP/s / (devices x peak FLOP/s). The model FLOPs come from the
objective (an MAE encoder sees only visible patches; MLM logits are computed only at
masked positions), times 3 for forward + backward.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per device (bf16) from the vendors' spec sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,   # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,        # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,   # Trillium
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}

_measured_cpu_peak: dict[str, float] = {}


def measure_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
  """Best FLOP/s of an n x n matmul on the default device (f32 accumulation).

  The best of several runs, not the median: a peak is what the hardware can do, and
  other work on the machine (data threads) only ever makes a run slower.
  """
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / min(times)


def peak_flops_per_device(configured: float, dtype: str) -> tuple[float, str]:
  """(peak FLOP/s, where it came from): config override, spec table, or CPU measurement."""
  if configured > 0:
    return configured, "config"
  kind = jax.devices()[0].device_kind
  if kind in PEAK_FLOPS:
    return PEAK_FLOPS[kind], f"spec sheet ({kind})"
  if dtype not in _measured_cpu_peak:
    _measured_cpu_peak[dtype] = measure_matmul_peak(dtype)
  return _measured_cpu_peak[dtype], f"measured {dtype} matmul on {kind}"


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricWriter:
  """Writes one record per logged step to metrics.jsonl, TensorBoard and the console.

  Only process 0 writes; other processes get a writer that drops everything.
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled, self.workdir = enabled, workdir
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      from tensorboardX import SummaryWriter  # Only process 0 pays for the import.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for key, value in record.items():
      if key != "step":
        self._tb.add_scalar(key, value, step)
    self._tb.flush()

  def images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """uint8 (H, W, C) images to TensorBoard and to <workdir>/<name>/step_<step>.png."""
    if not self.enabled:
      return
    from PIL import Image
    for name, image in images.items():
      image = np.asarray(image)
      self._tb.add_image(name, image, step, dataformats="HWC")
      directory = os.path.join(self.workdir, name)
      os.makedirs(directory, exist_ok=True)
      path = os.path.join(directory, f"step_{int(step)}.png")
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path + ".tmp",
                                                                               format="PNG")
      os.replace(path + ".tmp", path)
    self._tb.flush()

  def console(self, line: str) -> None:
    if self.enabled:
      print(line, flush=True)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Throughput:
  """Units/s and MFU over the window since the last report."""

  def __init__(self, *, units_per_step: float, flops_per_step: float, peak_flops: float,
               num_devices: int, unit: str):
    self.units_per_step = units_per_step
    self.flops_per_step = flops_per_step
    self.peak = peak_flops * num_devices
    self.unit = unit
    self._t = time.perf_counter()
    self._steps = 0

  def tick(self) -> None:
    self._steps += 1

  def restart(self) -> None:
    """Starts a new window (after compilation, evaluation or a checkpoint save)."""
    self._t, self._steps = time.perf_counter(), 0

  def report(self) -> dict[str, float]:
    now = time.perf_counter()
    elapsed, steps = now - self._t, self._steps
    self._t, self._steps = now, 0
    if steps == 0 or elapsed <= 0:
      return {}
    step_time = elapsed / steps
    return {
        f"{self.unit}_per_sec": self.units_per_step / step_time,
        "step_time": step_time,
        "mfu": self.flops_per_step / step_time / self.peak,
    }


def progress_line(step: int, total: int, metrics: dict[str, float], unit: str,
                  eta_seconds: float) -> str:
  parts = [f"step {step}/{total}", f"loss {metrics['loss']:.4f}"]
  if f"{unit}_per_sec" in metrics:
    parts.append(f"{metrics[f'{unit}_per_sec']:,.0f} {unit}/s")
    parts.append(f"MFU {100 * metrics['mfu']:.2f}%")
  parts.append(f"ETA {format_duration(eta_seconds)}")
  return " | ".join(parts)
