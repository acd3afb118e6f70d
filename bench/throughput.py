"""Training-step throughput and MFU of the real trainer step, per recipe, size and dtype.

  python -m bench.throughput [--recipes bert-tiny,gpt-small,...] [--dtypes float32,bfloat16]
                             [--steps N] [--warmup W] [--json out.json]

Every row builds its step through the trainer's own functions (`train.setup`,
`init_state_fn`, `state_shardings`, `make_train_step`, `make_iterator`) from a recipe
loaded with `config.load_config_file` + `apply_override`; nothing of the step is
re-implemented here. The jitted step is lowered and compiled once (compile time reported),
run `--warmup` times, then timed two ways:

  * prefetched: N batches are pulled from the real grain iterator and put on the device
    before timing; each step is blocked on (`block_until_ready`) and timed alone. The
    median step time gives step ms, units/s and MFU: the model alone.
  * in-loop: like `train._loop`, each step pulls `next(iterator)` and dispatches without
    blocking (async dispatch overlaps the host pipeline with the step); blocked once at the
    end. Units/s over the N steps: what the trainer sees with its data pipeline.

Model FLOPs per step = 3 x objective.forward_flops_per_example x global_batch (the same
count the trainer's MFU uses). MFU divides by the measured CPU matmul peak of the step's
compute precision (`metrics.measure_matmul_peak`), or, on an accelerator, by the same
peak the trainer would use (`metrics.peak_flops_per_device`).

The "small" sizes match the HF transformers reference in ../shared/STACK-NOTES.md:
BERT/GPT H=256, 4 layers, 4 heads, FF 1024, vocab 8192, batch 16 x 128 (HF, torch CPU,
f32 AdamW: ~2,700 tokens/s BertForMaskedLM, ~2,800 GPT2LMHeadModel). MAE small is the
reference's model (patch 4, encoder 192 x 4 x 3 heads FF 768, decoder 128 x 2, 4 heads,
FF 512, batch 64) but on our data, Fashion-MNIST 28x28x1 (49 patches of 16 values), not
the reference's 32x32x3 (64 patches of 48 values, HF ViTMAE ~240 images/s): per image it
is ~25% fewer tokens and a 3x smaller pixel head, so images/s is not directly comparable.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time

# Same default cache as the tests, before anything reads it.
os.environ.setdefault("PRETRAIN_CACHE", os.path.expanduser("~/.cache/pretrain"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pretrain import config as config_lib  # noqa: E402
from pretrain import metrics as metrics_lib  # noqa: E402
from pretrain import sharding, train  # noqa: E402
from pretrain import steps as run_steps  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(os.path.dirname(HERE), "configs")

_TEXT_SMALL = {
    "model.num_layers": "4", "model.d_model": "256", "model.num_heads": "4",
    "model.d_ff": "1024", "model.max_len": "128", "data.vocab_size": "8192",
    "data.seq_len": "128", "train.global_batch": "16",
}
# name -> (recipe spec relative to configs/, overrides applied with apply_override)
RECIPES: dict[str, tuple[str, dict[str, str]]] = {
    "bert-tiny": ("bert.py:tiny", {}),
    "gpt-tiny": ("gpt.py:tiny", {}),
    "mae-tiny": ("mae.py:tiny", {}),
    "bert-small": ("bert.py:tiny", _TEXT_SMALL),
    "gpt-small": ("gpt.py:tiny", _TEXT_SMALL),
    "mae-small": ("mae.py:tiny", {
        "model.patch_size": "(4, 4)",
        "model.num_layers": "4", "model.d_model": "192", "model.num_heads": "3",
        "model.d_ff": "768",
        "model.dec_d_model": "128", "model.dec_layers": "2", "model.dec_heads": "4",
        "model.dec_d_ff": "512",
        "train.global_batch": "64",
    }),
}
DTYPES = ("float32", "bfloat16")
PEAK_N = 2048
PEAK_REPEATS = 5


def load_recipe(name: str, dtype: str):
  spec, overrides = RECIPES[name]
  config = config_lib.load_config_file(os.path.join(CONFIGS, spec))
  for key, value in {**overrides, "model.dtype": dtype}.items():
    config_lib.apply_override(config, key, value)
  return config


def _ready(tree):
  return jax.block_until_ready(tree)


_DEF = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_DOT = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (\w+)\[([\d,]*)\]\S* dot\(%([\w.\-]+), "
                  r"%([\w.\-]+)\).*?lhs_contracting_dims=\{([\d,]*)\}")


def matmul_dtype_mix(hlo_text: str) -> dict[str, float]:
  """FLOPs of the compiled step's dots by operand dtypes, e.g. {"bf16xbf16->f32": 1e9}.

  Read from the optimized HLO, so it shows what XLA actually runs (e.g. whether the
  backward pass of a bfloat16 model multiplies in bf16 or was upcast to f32).
  """
  shapes = {}
  for line in hlo_text.splitlines():
    m = _DEF.match(line)
    if m:
      shapes[m.group(1)] = (m.group(2), [int(d) for d in m.group(3).split(",") if d])
  mix: dict[str, float] = {}
  for line in hlo_text.splitlines():
    m = _DOT.match(line)
    if not m:
      continue
    out_t, out_shape, lhs, rhs, contracting = m.groups()
    (lt, lshape), (rt, _) = shapes.get(lhs, ("?", [])), shapes.get(rhs, ("?", []))
    k = math.prod(lshape[int(d)] for d in contracting.split(",") if d) if lshape else 0
    n = math.prod(int(d) for d in out_shape.split(",") if d)
    key = f"{lt}x{rt}->{out_t}"
    mix[key] = mix.get(key, 0.0) + 2.0 * n * k
  return mix


def bench_one(name: str, dtype: str, *, steps: int, warmup: int, peaks: dict) -> dict:
  config = load_recipe(name, dtype)
  t0 = time.perf_counter()
  run = train.setup(config)  # validates, builds data (tokenizer/packing cached), model
  setup_s = time.perf_counter() - t0
  objective, t = run.objective, config.train
  with sharding.activation_context(run.mesh, run.rules):
    _, shardings = train.sharded_abstract_state(run)
    state = _ready(jax.jit(train.init_state_fn(run), out_shardings=shardings)(
        train.init_rng(config)))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    step_fn = run_steps.make_train_step(run, shardings)

    # Batches for warmup + timing, pulled from the real pipeline and put on device first.
    data_iter = run_steps.make_iterator(run, run.train_source, shuffle=True)
    batches = [sharding.global_batch(next(data_iter), run.mesh) for _ in range(warmup + steps)]
    _ready(batches)

    t0 = time.perf_counter()
    lowered = step_fn.lower(state, batches[0])
    lower_s = time.perf_counter() - t0
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mix = matmul_dtype_mix(compiled.as_text())

    for b in batches[:warmup]:
      state, out = compiled(state, b)
    _ready((state, out))
    # Same-precision peak again, right now: on a shared machine it shows how contended
    # this row's timing was (compare with the peak at the top).
    peak_now = metrics_lib.measure_matmul_peak(dtype, n=PEAK_N, repeats=PEAK_REPEATS)

    times = []
    for b in batches[warmup:]:
      start = time.perf_counter()
      state, out = compiled(state, b)
      _ready((state, out))
      times.append(time.perf_counter() - start)
    loss_prefetched = float(out["loss"])
    del batches

    # The trainer's loop shape: next(iterator) -> global_batch -> dispatch, no block.
    loop_iter = run_steps.make_iterator(run, run.train_source, shuffle=True)
    for _ in range(warmup):
      state, out = compiled(state, sharding.global_batch(next(loop_iter), run.mesh))
    _ready((state, out))
    start = time.perf_counter()
    for _ in range(steps):
      state, out = compiled(state, sharding.global_batch(next(loop_iter), run.mesh))
    _ready((state, out))
    loop_s = time.perf_counter() - start
    loss_loop = float(out["loss"])
    del state, out, loop_iter, data_iter

  units_per_step = objective.units_per_example(config, run.info) * t.global_batch
  flops_per_step = 3 * objective.forward_flops_per_example(config, run.info,
                                                           run.model_cfg) * t.global_batch
  median = statistics.median(times)
  peak = peaks[dtype]
  mfu = flops_per_step / median / (peak * jax.device_count())
  shape = (f"{t.global_batch}x{config.data.seq_len}" if objective.modality == "text"
           else f"{t.global_batch}x{'x'.join(map(str, run.info.image_shape))}")
  if not (np.isfinite(loss_prefetched) and np.isfinite(loss_loop)):
    print(f"warning: {name} {dtype}: non-finite loss ({loss_prefetched}, {loss_loop})",
          file=sys.stderr)
  return {
      "config": name, "recipe": RECIPES[name][0], "overrides": RECIPES[name][1],
      "dtype": dtype, "objective": objective.name, "unit": objective.unit,
      "batch": shape, "params": params,
      "vocab_size": getattr(run.model_cfg, "vocab_size", None),
      "units_per_step": units_per_step,
      "step_ms_median": 1e3 * median, "step_ms_min": 1e3 * min(times),
      "step_ms_max": 1e3 * max(times), "step_ms_all": [1e3 * x for x in times],
      "units_per_s": units_per_step / median,
      "loop_step_ms": 1e3 * loop_s / steps, "loop_units_per_s": units_per_step * steps / loop_s,
      "model_tflop_per_step": flops_per_step / 1e12,
      "achieved_gflop_per_s": flops_per_step / median / 1e9,
      "peak_gflop_per_s": peak / 1e9, "mfu": mfu,
      "peak_now_gflop_per_s": peak_now / 1e9,
      "mfu_vs_peak_now": flops_per_step / median / (peak_now * jax.device_count()),
      "matmul_flops_by_dtype": mix,
      "bf16_matmul_share": sum(v for k, v in mix.items() if k.startswith("bf16xbf16"))
                           / max(sum(mix.values()), 1.0),
      "setup_s": setup_s, "lower_s": lower_s, "compile_s": compile_s,
      "loss_prefetched": loss_prefetched, "loss_loop": loss_loop,
      "steps": steps, "warmup": warmup,
  }


def measure_peaks() -> tuple[dict, str]:
  kind = jax.devices()[0].device_kind
  if jax.default_backend() == "cpu":
    peaks = {d: metrics_lib.measure_matmul_peak(d, n=PEAK_N, repeats=PEAK_REPEATS)
             for d in DTYPES}
    how = (f"measured on {kind}: jnp.dot of {PEAK_N}x{PEAK_N} {{dtype}} inputs with "
           f"preferred_element_type=float32, best of {PEAK_REPEATS} timed runs after 1 warm-up "
           "(metrics.measure_matmul_peak)")
  else:
    peaks, sources = {}, set()
    for d in DTYPES:
      peaks[d], src = metrics_lib.peak_flops_per_device(0.0, d)
      sources.add(src)
    how = "; ".join(sorted(sources)) + " (same peak the trainer uses)"
  return peaks, how


def _load() -> str:
  return "/".join(f"{x:.2f}" for x in os.getloadavg())


def format_table(rows: list[dict]) -> str:
  head = ("config", "dtype", "batch", "params", "units/s", "step ms", "units/s+data",
          "TFLOP/step", "GFLOP/s", "MFU", "peak now", "MFU@now", "bf16 mm", "compile s", "setup s")
  lines = []
  for r in rows:
    unit = "tok" if r["unit"] == "tokens" else "img"
    lines.append((
        r["config"], r["dtype"], r["batch"], f"{r['params'] / 1e6:.2f}M",
        f"{r['units_per_s']:,.0f} {unit}", f"{r['step_ms_median']:.1f}",
        f"{r['loop_units_per_s']:,.0f} {unit}", f"{r['model_tflop_per_step']:.4f}",
        f"{r['achieved_gflop_per_s']:.1f}", f"{100 * r['mfu']:.1f}%",
        f"{r['peak_now_gflop_per_s']:.0f}", f"{100 * r['mfu_vs_peak_now']:.1f}%",
        f"{100 * r['bf16_matmul_share']:.0f}%", f"{r['compile_s']:.1f}", f"{r['setup_s']:.1f}"))
  widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
            for i, h in enumerate(head)]
  fmt = lambda cells: "  ".join(c.rjust(w) if i > 2 else c.ljust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(cells, widths)))
  out = [fmt(head), fmt(["-" * w for w in widths])]
  out += [fmt(l) for l in lines]
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--recipes", default=",".join(RECIPES),
                 help=f"comma-separated subset of {', '.join(RECIPES)}")
  p.add_argument("--dtypes", default=",".join(DTYPES), help="float32,bfloat16")
  p.add_argument("--steps", type=int, default=15, help="timed steps per config and mode")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  p.add_argument("--json", help="write the rows (and peaks) to this file")
  args = p.parse_args(argv)
  names = [n for n in args.recipes.replace(" ", ",").split(",") if n]
  dtypes = [d for d in args.dtypes.replace(" ", ",").split(",") if d]
  bad = [n for n in names if n not in RECIPES] + [d for d in dtypes if d not in DTYPES]
  if bad or args.steps < 1 or args.warmup < 1:
    p.error(f"unknown {bad}; recipes: {', '.join(RECIPES)}; dtypes: {', '.join(DTYPES)}; "
            "steps and warmup must be >= 1")

  wall = time.perf_counter()
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}), {os.cpu_count()} CPUs, load average "
        f"{_load()} (1/5/15 min; other processes on the machine skew every number)",
        flush=True)
  # Before any grain thread exists, as the trainer does.
  peaks, how = measure_peaks()
  print(f"peak float32:  {peaks['float32'] / 1e9:,.1f} GFLOP/s", flush=True)
  print(f"peak bfloat16: {peaks['bfloat16'] / 1e9:,.1f} GFLOP/s", flush=True)
  print(f"  ({how}); MFU uses the peak of the row's model.dtype", flush=True)
  print(f"steps: {args.warmup} warmup + {args.steps} timed per mode; 'units/s' and 'step ms' "
        "are medians with pre-fetched device batches, 'units/s+data' has the grain iterator "
        "in the loop (trainer-style async dispatch)", flush=True)

  rows = []
  for name in names:
    for dtype in dtypes:
      row = bench_one(name, dtype, steps=args.steps, warmup=args.warmup, peaks=peaks)
      row["load_1min"] = os.getloadavg()[0]
      rows.append(row)
      print(f"  {name} {dtype}: setup {row['setup_s']:.1f}s, compile {row['compile_s']:.1f}s "
            f"(lower {row['lower_s']:.1f}s), step {row['step_ms_median']:.1f} ms "
            f"[{row['step_ms_min']:.1f}-{row['step_ms_max']:.1f}], with data "
            f"{row['loop_step_ms']:.1f} ms, loss {row['loss_loop']:.3f}, load {_load()}",
            flush=True)
  print()
  print(format_table(rows))
  print("\nunits/s, step ms, GFLOP/s, MFU: median of the timed steps, device batches "
        "prefetched; units/s+data: grain iterator in the loop. TFLOP/step = 3 x objective "
        "forward FLOPs x batch. MFU: vs the peak at the top for the row's dtype; 'peak now' "
        "(GFLOP/s) re-measured just before the row's timing, 'MFU@now' against it. 'bf16 mm': "
        "share of the compiled step's dot FLOPs with bf16 x bf16 operands.")
  print(f"\ntotal {time.perf_counter() - wall:.0f}s, load average now {_load()}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"jax": jax.__version__, "device": jax.devices()[0].device_kind,
                 "num_devices": jax.device_count(), "cpus": os.cpu_count(),
                 "peak_flops": peaks, "peak_method": how, "rows": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
