"""Config loading, `--config.<key>=<value>` overrides and validation.

Follows the ml_collections convention (`--config=configs/bert.py:tiny` calls
`get_config("tiny")`), but every failure is a `ConfigError` with one line naming the bad
key or value and what would be valid, raised before any data is read or step compiled.
"""
from __future__ import annotations

import ast
import glob
import importlib.util
import json
import os

import ml_collections

from configs.base import flatten_keys
from pretrain import sharding, teacher as teacher_lib
from pretrain.data.modalities import MODALITIES
from pretrain.data.packing import PACKINGS
from pretrain.data.tokenizer import KINDS as TOKENIZER_KINDS
from pretrain.optim import SCHEDULES
from pretrain.registry import MODELS, OBJECTIVES

DTYPES = ("float32", "bfloat16")
NONFINITE_POLICIES = ("stop", "skip")
INIT_VOCAB = ("exact", "extend")


class ConfigError(ValueError):
  """A bad config file, key or value; the message is one line."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/recipe.py[:arg]` -> the ConfigDict its `get_config(arg)` returns."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={spec}: no such file {path!r} "
                      f"(recipes: {', '.join(_recipes(path))})")
  module_spec = importlib.util.spec_from_file_location("_recipe", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config={spec}: {path} defines no get_config(arg)")
  try:
    config = module.get_config(arg or None)
  except ValueError as e:  # A recipe names its valid variants in the message.
    raise ConfigError(f"--config={spec}: {e}") from None
  config.lock()
  return config


def _recipes(path: str) -> list[str]:
  folder = os.path.dirname(path) or "configs"
  if not os.path.isdir(folder):
    folder = "configs"
  if not os.path.isdir(folder):
    return []
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if f.endswith(".py") and not f.startswith("_") and f != "base.py")


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets dotted `key` to `text` parsed as the existing value's type."""
  *parents, leaf = key.split(".")
  node = config
  for i, name in enumerate(parents):
    child = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(child, ml_collections.ConfigDict):
      raise ConfigError(f"unknown config key {key!r}: {'.'.join(parents[:i + 1])!r} is not "
                        f"a section; valid: {', '.join(sorted(node.keys()))}")
    node = child
  if leaf not in node:
    where = ".".join(parents) or "top level"
    raise ConfigError(f"unknown config key {key!r}; valid keys in {where}: "
                      f"{', '.join(sorted(node.keys()))}")
  node[leaf] = _parse_like(node[leaf], text, key)


def _parse_like(current, text: str, key: str):
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{key}={text}: expected a bool (true/false)")
  if isinstance(current, (int, float)):
    try:
      value = type(current)(float(text)) if isinstance(current, int) else float(text)
    except ValueError:
      raise ConfigError(f"--config.{key}={text}: expected a {type(current).__name__}") from None
    if isinstance(current, int) and float(text) != value:
      raise ConfigError(f"--config.{key}={text}: expected an integer")
    return value
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ConfigError(f"--config.{key}={text}: expected a Python tuple literal") from None
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"--config.{key}={text}: expected a tuple like (1, 2)")
    return tuple(value)
  return text


def parse_args(argv: list[str]) -> tuple[ml_collections.ConfigDict, str, set[str]]:
  """argv -> (config with overrides, workdir, other flags present)."""
  config_spec, workdir, overrides, switches = None, None, [], set()
  for arg in argv:
    name, eq, value = arg.partition("=")
    if name == "--config" and eq:
      config_spec = value
    elif name == "--workdir" and eq:
      workdir = value
    elif name.startswith("--config.") and eq:
      overrides.append((name[len("--config."):], value))
    elif name in ("--describe",) and not eq:
      switches.add(name[2:])
    else:
      raise ConfigError(f"unknown argument {arg!r}; usage: --config=configs/<recipe>.py:<variant> "
                        f"--workdir=<dir> [--config.<key>=<value> ...] [--describe]")
  if config_spec is None:
    raise ConfigError("missing --config=configs/<recipe>.py:<variant>")
  if workdir is None and "describe" not in switches:
    raise ConfigError("missing --workdir=<dir>")
  config = load_config_file(config_spec)
  for key, value in overrides:
    apply_override(config, key, value)
  return config, workdir, switches


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks values that would otherwise fail late (after data loading or compile)."""
  import objectives  # noqa: F401  (registers objectives)
  import pretrain.model_builders  # noqa: F401  (registers models)
  from pretrain.evaluation import evaluators

  _require(config.objective.name in OBJECTIVES,
           f"objective.name={config.objective.name!r}; valid: {', '.join(OBJECTIVES.names())}")
  _require(config.model.name in MODELS,
           f"model.name={config.model.name!r}; valid: {', '.join(MODELS.names())}")
  _require(config.model.dtype in DTYPES,
           f"model.dtype={config.model.dtype!r}; valid: {', '.join(DTYPES)}")
  t = config.train
  for key in ("steps", "global_batch", "grad_accum", "log_every", "checkpoint_every",
              "keep_checkpoints", "eval_steps"):
    _require(t[key] > 0, f"train.{key}={t[key]}: must be > 0")
  _require(t.eval_every >= 0, f"train.eval_every={t.eval_every}: must be >= 0 (0 = never)")
  _require(t.checkpoint_timeout_s > 0,
           f"train.checkpoint_timeout_s={t.checkpoint_timeout_s}: must be > 0 (seconds)")
  _require(t.nonfinite in NONFINITE_POLICIES,
           f"train.nonfinite={t.nonfinite!r}; valid: {', '.join(NONFINITE_POLICIES)}")
  _require(t.global_batch % t.grad_accum == 0,
           f"train.global_batch={t.global_batch} is not divisible by train.grad_accum="
           f"{t.grad_accum}")
  try:
    data, fsdp, _ = sharding.mesh_shape(config.mesh, num_devices)
  except sharding.MeshError as e:
    raise ConfigError(str(e)) from None
  micro = t.global_batch // t.grad_accum
  _require(micro % (data * fsdp) == 0,
           f"micro-batch {micro} (train.global_batch / train.grad_accum) is not divisible by "
           f"mesh data x fsdp = {data * fsdp}")
  o = config.optim
  _require(o.schedule in SCHEDULES, f"optim.schedule={o.schedule!r}; valid: {', '.join(SCHEDULES)}")
  _require(o.lr > 0, f"optim.lr={o.lr}: must be > 0")
  _require(0 <= o.warmup_steps <= t.steps,
           f"optim.warmup_steps={o.warmup_steps}: must be in [0, train.steps={t.steps}]")
  _require(0 <= o.end_lr_fraction <= 1, f"optim.end_lr_fraction={o.end_lr_fraction}: must be in [0, 1]")
  _require(o.clip_norm >= 0, f"optim.clip_norm={o.clip_norm}: must be >= 0 (0 = off)")
  if config.init_from.path:
    _require(os.path.isdir(config.init_from.path),
             f"init_from.path={config.init_from.path!r}: no such directory")
  _require(config.init_from.vocab in INIT_VOCAB,
           f"init_from.vocab={config.init_from.vocab!r}; valid: {', '.join(INIT_VOCAB)}")
  objective = OBJECTIVES.get(config.objective.name)
  _require(config.init_from.vocab == "exact" or (config.init_from.path
                                                  and objective.modality == "text"),
           f"init_from.vocab='extend' needs init_from.path and a text objective "
           f"({objective.name!r} is {objective.modality})")
  _require(not objective.models or config.model.name in objective.models,
           f"model.name={config.model.name!r} cannot run objective {objective.name!r}; "
           f"valid: {', '.join(objective.models)}")
  sources = MODALITIES.get(objective.modality).sources
  _require(config.data.source in sources,
           f"data.source={config.data.source!r} cannot feed objective {objective.name!r} "
           f"({objective.modality}); valid: {', '.join(sources)}")
  _validate_data_path(config.data)
  if objective.modality == "text":
    _validate_text(config, objective.tokenizer)
  try:
    if "teacher" in config:
      teacher_lib.validate(config, objective)
    objective.validate(config)
    MODELS.get(config.model.name).validate(config.model)
    if teacher_lib.kind(config) != "none":
      section = teacher_lib.model_section(config)
      _require(section.name in MODELS, f"teacher.model.name={section.name!r}; valid: "
               f"{', '.join(MODELS.names())}")
      MODELS.get(section.name).validate(section)
    evaluators.validate(config, objective)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _validate_data_path(data) -> None:
  """File sources must point at something before any tokenizer or cache is built."""
  if data.source == "text_files":
    _require(any(os.path.isfile(p) for p in glob.glob(data.path, recursive=True)),
             f"data.path={data.path!r}: no files match (data.source=text_files wants a glob "
             f"of .txt/.jsonl files)")
  elif data.source == "image_folder":
    _require(os.path.isdir(data.path), f"data.path={data.path!r}: no such directory "
             f"(data.source=image_folder wants <path>/<class>/*.png|jpg)")


def _validate_text(config: ml_collections.ConfigDict, default_tokenizer: str) -> None:
  d = config.data
  kind = d.get("tokenizer") or default_tokenizer
  _require(kind in TOKENIZER_KINDS, f"data.tokenizer={kind!r}; valid: {', '.join(TOKENIZER_KINDS)}")
  for key in ("seq_len", "vocab_size"):
    _require(d[key] > 0, f"data.{key}={d[key]}: must be > 0")
  if d.get("tokenizer_file"):
    _require(os.path.isfile(d.tokenizer_file),
             f"data.tokenizer_file={d.tokenizer_file!r}: no such file (an HF tokenizer.json)")
    _require(d.source != "phases", "data.tokenizer_file is not supported with "
             "data.source='phases' (its tokenizer is trained on every phase's corpus)")
  packing = d.get("packing") or "concat"
  _require(packing in PACKINGS, f"data.packing={packing!r}; valid: {', '.join(PACKINGS)}")
  if config.model.get("pos_emb") == "learned":
    _require(d.seq_len <= config.model.max_len,
             f"data.seq_len={d.seq_len} exceeds model.max_len={config.model.max_len}, the "
             f"learned position table's size; lower data.seq_len or raise model.max_len")


def check_workdir(workdir: str) -> None:
  """The workdir must be (or be creatable as) a writable directory; checked before any
  data is read, so a bad --workdir costs nothing."""
  path = os.path.abspath(workdir)
  _require(not os.path.exists(path) or os.path.isdir(path),
           f"--workdir={workdir} exists and is not a directory")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  _require(os.path.isdir(parent), f"--workdir={workdir}: {parent} is a file, not a directory")
  _require(os.access(parent, os.W_OK | os.X_OK), f"--workdir={workdir}: {parent} is not writable")


# A resumed run must agree on these or its checkpoint cannot mean the same thing; any other
# difference (steps, logging, mesh, threads) is allowed and reported.
RUN_IDENTITY = ("objective.", "model.", "data.source", "data.path", "data.tfds_name",
                "data.feature", "data.tokenizer", "data.vocab_size", "data.seq_len",
                "data.packing", "data.phases", "seed", "teacher.kind", "teacher.model.")


def _leaf_values(config: ml_collections.ConfigDict) -> dict:
  flat = {}
  for key in flatten_keys(config):
    value = config
    for part in key.split("."):
      value = value[part]
    # As config.json stores it: tuples at any depth become lists.
    flat[key] = json.loads(json.dumps(value)) if isinstance(value, (tuple, list)) else value
  return flat


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Compares with the config.json a previous run left in `workdir`.

  Raises ConfigError when the workdir is unusable or an identity key differs (the
  checkpoint there belongs to another model or data); returns the other differing keys,
  which a resume may change.
  """
  check_workdir(workdir)
  path = os.path.join(workdir, "config.json")
  checkpoints = os.path.join(workdir, "checkpoints")
  if not (os.path.exists(path) and os.path.isdir(checkpoints) and os.listdir(checkpoints)):
    return []  # Nothing to resume: the run starts fresh and records its own config.
  with open(path) as f:
    saved = _leaf_values(ml_collections.ConfigDict(json.load(f)))
  current = _leaf_values(config)
  differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
  fatal = [k for k in differing if k.startswith(RUN_IDENTITY)]
  if fatal:
    raise ConfigError(
        f"--workdir={workdir} holds a run with different {', '.join(fatal)} (e.g. {fatal[0]}="
        f"{saved.get(fatal[0])!r} there, {current.get(fatal[0])!r} now); use a new --workdir, "
        f"or start from it with --config.init_from.path={workdir}")
  return differing


def describe(config: ml_collections.ConfigDict) -> str:
  """The resolved config, one key per line with its documentation."""
  from configs.base import KEY_DOCS

  return "\n".join(f"{key} = {value!r}    # {KEY_DOCS.get(key, 'UNDOCUMENTED')}"
                   for key, value in _leaf_values(config).items())
