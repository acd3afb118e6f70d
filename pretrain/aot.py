"""Compile the real train step for a TPU slice on a CPU machine, and say whether it fits.

  python -m pretrain.aot --config=configs/<recipe>.py:<variant> [--topology=v5p-256] \\
      [--config.<key>=<value> ...]
  python -m pretrain.aot --all          # every paper config on its `topology`, one table

Needs libtpu (`pip install -e ".[aot]"`) for compile-only devices of the slice. State and
batch are abstract (ShapeDtypeStructs with the trainer's shardings); the jitted step is
`steps.make_train_step`'s own, so what fits here is what `pretrain.main` runs on the pod.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import jax
import numpy as np
from jax.experimental import topologies

import objectives  # noqa: F401  (registers objectives)
import pretrain.model_builders  # noqa: F401  (registers models)
from objectives.base import DataInfo
from pretrain import config as config_lib, metrics as metrics_lib, sharding, steps, train
from pretrain.data.modalities import MODALITIES
from pretrain.registry import MODELS, OBJECTIVES

GiB = 2 ** 30
# Compile-only use needs no exclusive hold on TPU chips: do not fail on libtpu's lockfile
# when another jax process on this machine loaded libtpu first.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@dataclasses.dataclass(frozen=True)
class Generation:
  """How a TPU generation's slices are named, laid out and sized."""
  prefix: str  # topology-name prefix libtpu knows ("v5p:4x4x8")
  chip_config: str
  cores_per_name_unit: int  # v4-N / v5p-N count TensorCores (2 per chip); v5e/v6e chips
  hbm_gib: float  # per chip
  dims: int  # 3D torus (v4, v5p) or 2D (v5e, v6e)
  sizes: tuple[int, ...]  # valid N in "<gen>-N"


GENERATIONS = {
    "v4": Generation("v4", "megacore", 2, 32, 3, tuple(2 ** i for i in range(3, 13))),
    "v5p": Generation("v5p", "megacore", 2, 95, 3, tuple(2 ** i for i in range(3, 14))),
    "v5e": Generation("v5e", "default", 1, 16, 2, (1, 4, 8, 16, 32, 64, 128, 256)),
    "v6e": Generation("v6e", "default", 1, 32, 2, (1, 4, 8, 16, 32, 64, 128, 256)),
}
HOST_BOUNDS = (2, 2, 1)  # chips per host (4-chip hosts) as get_topology_desc wants them
VALID = "; ".join(f"{g}-N, N in {{{', '.join(map(str, s.sizes))}}}"
                  for g, s in GENERATIONS.items())


@dataclasses.dataclass(frozen=True)
class Slice:
  """A parsed slice name, e.g. v5p-256 = 128 chips as 4x4x8."""
  name: str
  generation: Generation
  shape: tuple[int, int, int]  # chips along x, y, z

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def topology_name(self) -> str:
    return f"{self.generation.prefix}:{'x'.join(map(str, self.shape[:self.generation.dims]))}"

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    """Torus wraparound links: full cubes of 4x4x4 (3D) or the full 16x16 pod (2D)."""
    full = self.chips >= (64 if self.generation.dims == 3 else 256)
    return tuple(full and side >= 4 for side in self.shape)

  def devices(self) -> list:
    desc = topologies.get_topology_desc(
        topology_name=self.topology_name, platform="tpu",
        chip_config_name=self.generation.chip_config,
        chips_per_host_bounds=tuple(min(s, h) for s, h in zip(self.shape, HOST_BOUNDS)),
        wrap=self.wrap)
    return desc.devices


def parse_topology(name: str) -> Slice:
  """'v5p-256' -> Slice(4x4x8 chips); ValueError naming the valid names otherwise."""
  gen_name, _, count = name.partition("-")
  gen = GENERATIONS.get(gen_name)
  if gen is None or not count.isdigit() or int(count) not in gen.sizes:
    raise ValueError(f"topology {name!r}: valid: {VALID}")
  chips = int(count) // gen.cores_per_name_unit
  shape = [2, 2, 1] if gen.dims == 3 else [1, 1, 1]
  while math.prod(shape) < chips:  # Double the smallest side, the last of equals first.
    axis = max(i for i in range(gen.dims) if shape[i] == min(shape[:gen.dims]))
    shape[axis] *= 2
  return Slice(name, gen, tuple(shape))


def data_info(config, objective) -> DataInfo:
  """The DataInfo the step's shapes depend on, from the config alone."""
  return MODALITIES.get(objective.modality).abstract_info(config)


def abstract_run(config, devices) -> train.Run:
  """`train.setup` without data sources, over the given (compile-only) devices."""
  objective = OBJECTIVES.get(config.objective.name)
  info = data_info(config, objective)
  model_cfg = MODELS.get(config.model.name).model_config(config.model, info)
  return train.build_run(config, objective, info, model_cfg, None, None, devices)


def abstract_batch(run: train.Run) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the data pipeline would feed: one synthetic clean example through
  the objective's own host transform gives every key, shape and dtype."""
  info = run.info
  examples = run.objective.text_examples(run.config)
  if examples is not None:
    example = examples.example(info)
  else:
    example = MODALITIES.get(run.objective.modality).abstract_example(info)
  transform = run.objective.host_transform(run.config, info)
  if transform is not None:
    if getattr(transform, "wants_example_index", False):  # as pipeline.make_iterator adds
      example["example_index"] = np.int64(0)
    example = transform.random_map(example, np.random.default_rng(0))
  batch_sharding = sharding.batch_sharding(run.mesh)
  return {k: jax.ShapeDtypeStruct((run.config.train.global_batch, *np.shape(v)),
                                  np.asarray(v).dtype, sharding=batch_sharding)
          for k, v in example.items()}


@dataclasses.dataclass
class Report:
  """What one compile says about a config on a slice (memory is per chip, in bytes)."""
  label: str
  topology: str
  chips: int
  mesh: dict
  params: int
  hbm: float
  model_flops: float  # per step: 3 x the objective's forward FLOPs x global batch
  peak_flops: float  # per chip, spec sheet
  compile_s: float = 0.0
  argument: int = 0
  output: int = 0
  alias: int = 0
  temp: int = 0
  code: int = 0
  xla_flops: float = 0.0  # per chip, XLA cost analysis: a scan body is counted once
  error: str = ""  # RESOURCE_EXHAUSTED message when it does not fit

  @property
  def total(self) -> int:
    """HBM the step holds at its peak: donated state is reused for the new state."""
    return self.argument + self.output - self.alias + self.temp + self.code

  @property
  def fits(self) -> bool:
    return not self.error and self.total <= self.hbm

  @property
  def ideal_step_s(self) -> float:
    """Step time at 100% MFU: a floor, not a prediction."""
    return self.model_flops / (self.chips * self.peak_flops)


def compile_step(config, label: str = "") -> Report:
  """Lowers and compiles the trainer's step for `config.topology` (a validated config);
  a compile-time HBM overflow becomes a report that does not fit."""
  topo = parse_topology(config.topology)
  devices = topo.devices()
  run = abstract_run(config, devices)
  flops = 3 * run.objective.forward_flops_per_example(config, run.info, run.model_cfg)
  report = Report(
      label=label, topology=topo.name, chips=topo.chips, mesh=dict(run.mesh.shape),
      params=sum(math.prod(p.shape) for p in jax.tree.leaves(run.abstract_params)),
      hbm=topo.generation.hbm_gib * GiB, model_flops=flops * config.train.global_batch,
      peak_flops=metrics_lib.PEAK_FLOPS[devices[0].device_kind])
  start = time.perf_counter()
  state, shardings = train.sharded_abstract_state(run)
  step = steps.make_train_step(run, shardings)
  # Only tracing needs the mesh context (for activation constraints): under it, any eager
  # op would try to run on the compile-only devices.
  with sharding.activation_context(run.mesh, run.rules):
    lowered = step.lower(state, abstract_batch(run))
  try:
    compiled = lowered.compile()
  except Exception as e:  # XlaRuntimeError; its type is not public API.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    report.error = str(e).strip().splitlines()[0]
  report.compile_s = time.perf_counter() - start
  if report.error:
    return report
  mem = compiled.memory_analysis()
  report.argument, report.output = mem.argument_size_in_bytes, mem.output_size_in_bytes
  report.alias, report.temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
  report.code = mem.generated_code_size_in_bytes
  report.xla_flops = float(compiled.cost_analysis().get("flops", 0.0))
  return report


def _gib(n: float) -> str:
  return f"{n / GiB:.3g}"


def describe(r: Report) -> str:
  """The multi-line report of one compile."""
  lines = [
      f"config      {r.label}",
      f"topology    {r.topology}: {r.chips} chips, {_gib(r.hbm)} GiB HBM each",
      f"mesh        {r.mesh}",
      f"params      {r.params:,} ({r.params / 1e6:.1f}M)",
      f"compile     {r.compile_s:.1f} s",
  ]
  if r.error:
    return "\n".join(lines + [f"memory      DOES NOT FIT: {r.error}"])
  return "\n".join(lines + [
      f"memory/chip arguments {_gib(r.argument)} GiB, outputs {_gib(r.output)} GiB "
      f"(aliased {_gib(r.alias)}), temp {_gib(r.temp)} GiB, code {_gib(r.code)} GiB",
      f"            total {_gib(r.total)} of {_gib(r.hbm)} GiB -> "
      f"{'FITS' if r.fits else 'DOES NOT FIT'}",
      f"step FLOPs  {r.model_flops:.3e} model (3 x forward, objective's count), "
      f"{r.model_flops / r.chips:.3e} per chip; XLA cost analysis {r.xla_flops:.3e} per chip "
      "(counts a scanned body once)",
      f"step time   >= {r.ideal_step_s * 1e3:.3g} ms at 100% MFU "
      f"({r.peak_flops / 1e12:.0f} TFLOP/s/chip)",
  ])


TABLE_HEAD = ("| config | topology | mesh (data x fsdp x tensor) | params | args GiB | "
              "temp GiB | total GiB / HBM | fits | step TFLOPs | ms/step @100% MFU | "
              "compile s |\n|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: Report) -> str:
  mesh = " x ".join(str(r.mesh[a]) for a in sharding.MESH_AXES)
  fits = "yes" if r.fits else "**no**"
  return (f"| {r.label} | {r.topology} | {mesh} | {r.params / 1e6:,.0f}M | "
          f"{_gib(r.argument)} | {_gib(r.temp)} | {_gib(r.total)} / {_gib(r.hbm)} | {fits} | "
          f"{r.model_flops / 1e12:,.1f} | {r.ideal_step_s * 1e3:,.3g} | {r.compile_s:.0f} |")


# Every paper-size variant (the Well-Read Students grid is represented by its named sizes).
PAPER_CONFIGS = (
    "configs/bert.py:base", "configs/bert.py:large", "configs/bert.py:mini",
    "configs/bert.py:small", "configs/bert.py:medium", "configs/gpt.py:small",
    "configs/gpt.py:medium", "configs/gpt.py:large", "configs/gpt.py:xl",
    "configs/mae.py:B/16", "configs/mae.py:L/16", "configs/mae.py:H/14",
    "configs/t5.py:small", "configs/t5.py:base", "configs/t5.py:large",
    "configs/prefix_lm.py:xl",
)
USAGE = ("usage: python -m pretrain.aot --config=configs/<recipe>.py:<variant> "
         "[--topology=<slice>] [--config.<key>=<value> ...] | --all")


def parse_args(argv: list[str]):
  """argv -> (list of (label, config)) with overrides applied; ConfigError on bad input."""
  spec, overrides, run_all = None, [], False
  for arg in argv:
    name, eq, value = arg.partition("=")
    if name == "--config" and eq:
      spec = value
    elif name == "--topology" and eq:
      overrides.append(("topology", value))
    elif name.startswith("--config.") and eq:
      overrides.append((name[len("--config."):], value))
    elif arg == "--all":
      run_all = True
    else:
      raise config_lib.ConfigError(f"unknown argument {arg!r}; {USAGE}")
  if run_all == (spec is not None):
    raise config_lib.ConfigError(f"give exactly one of --config or --all; {USAGE}")
  configs = []
  for path in PAPER_CONFIGS if run_all else [spec]:
    config = config_lib.load_config_file(path)
    for key, value in overrides:
      config_lib.apply_override(config, key, value)
    if not config.topology:
      raise config_lib.ConfigError(f"{path} names no topology; pass --topology=<slice> "
                                   f"({VALID})")
    try:
      chips = parse_topology(config.topology).chips
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
    config_lib.validate(config, chips)
    configs.append((path.removeprefix("configs/").replace(".py", ""), config))
  return configs


def main(argv: list[str]) -> int:
  try:
    configs = parse_args(argv)
  except (config_lib.ConfigError, KeyError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  reports = []
  for label, config in configs:
    report = compile_step(config, label)
    print(describe(report) + "\n", flush=True)
    reports.append(report)
    jax.clear_caches()
  if len(reports) > 1:
    print("\n".join([TABLE_HEAD, *map(table_row, reports)]))
  return 0 if all(r.fits for r in reports) else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
