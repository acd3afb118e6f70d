"""Import and export of Hugging Face `config.json` + `model.safetensors` directories:
BertForMaskedLM and GPT2LMHeadModel (rule tables in `Arch`), BartForConditionalGeneration
(pretrain/hf/bart.py), T5ForConditionalGeneration (pretrain/hf/t5.py), ViTModel
(pretrain/hf/vit.py, as MAE's encoder) and, import only, ViTMAEForPreTraining.

  python -m pretrain.hf.convert export --workdir=runs/bert --out=hf/bert [--step=N]
  python -m pretrain.hf.convert import --hf=hf/bert    # config flags + what has no counterpart

Training from an HF directory needs no conversion: `--config.init_from.path=<hf dir>`
(with the printed `--config.model.*` flags so the shapes match) loads it like a run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax
import ml_collections
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from configs.base import base_config
from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from models.transformer import TextTransformer, TransformerConfig
from models.vit import MAE, ViTConfig
from objectives.base import DataInfo
from pretrain import checkpoint
from pretrain.hf import bart, bert, gpt2, t5, vit
from pretrain.hf.layout import expand
from pretrain.model_builders import EncoderDecoderBuilder, MaeBuilder, TransformerBuilder

ARCHS = {a.model_type: a for a in (bert.ARCH, gpt2.ARCH)}
# model_type -> (module with config_from_hf / to_ours / to_hf, HF activation config key)
SEPARATE = {bart.MODEL_TYPE: (bart, "activation_function"), vit.MODEL_TYPE: (vit, "hidden_act"),
            vit.MAE_TYPE: (vit, "hidden_act"), t5.MODEL_TYPE: (t5, "feed_forward_proj")}
CONFIG, WEIGHTS = "config.json", "model.safetensors"
BUILDERS = {"transformer": TransformerBuilder(), "encoder_decoder": EncoderDecoderBuilder(),
            "mae": MaeBuilder()}
# Our activation -> the HF name export writes (HF "gelu" is erf, "gelu_new" the tanh form);
# import also reads "gelu_pytorch_tanh", the same tanh form.
TO_HF_ACT = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}
FROM_HF_ACT = {**{hf: ours for ours, hf in TO_HF_ACT.items()}, "gelu_pytorch_tanh": "gelu",
               **{hf: ours for ours, hf in t5.ACTIVATIONS.items()}}


def is_hf_dir(path: str) -> bool:
  return all(os.path.isfile(os.path.join(path, f)) for f in (CONFIG, WEIGHTS))


def by_path(params) -> dict:
  """A (pure) params tree -> {'/'-joined path: leaf}, as checkpoints name them."""
  return {jax.tree_util.keystr(p, simple=True, separator="/"): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def param_shapes(cfg: TransformerConfig | ViTConfig) -> dict[str, tuple[int, ...]]:
  """Our params' shapes by path; a ViT's as MAE's (its `encoder/` subtree is the ViT)."""
  module = {EncoderDecoderConfig: EncoderDecoder, ViTConfig: MAE}.get(type(cfg), TextTransformer)
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: module(cfg, rngs=nnx.Rngs(0)))
  return {k: v.shape for k, v in by_path(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


@dataclasses.dataclass
class Imported:
  """An HF model as ours: its config, params by path, HF tensors with no counterpart, and
  notes on what was folded or dropped."""
  config: TransformerConfig
  params: dict[str, np.ndarray]
  unused: list[str]
  notes: list[str]

  @property
  def overrides(self) -> dict:
    """Config keys that build this model (`--config.<key>=<value>`)."""
    if isinstance(self.config, ViTConfig):
      fields = {k: getattr(self.config, k) for k in (
          "num_layers", "d_model", "num_heads", "d_ff", "patch_size", "channels", "pos_emb",
          "activation", "ln_eps", "dec_d_model", "dec_layers", "dec_heads", "dec_d_ff")}
      return {"model.name": "mae", "model.variant": "custom",
              **{f"model.{k}": v for k, v in fields.items()}}
    fields = {k: getattr(self.config, k) for k in (
        "num_layers", "d_model", "num_heads", "d_ff", "max_len", "pos_emb", "norm",
        "activation", "tie_embeddings", "head_transform", "embed_norm", "ln_eps",
        "norm_type", "use_bias")}
    if isinstance(self.config, EncoderDecoderConfig):
      fields.update(name="encoder_decoder", num_decoder_layers=self.config.dec_layers,
                    dec_embeddings=self.config.dec_embeddings, extra_ids=0)
    return {"model.variant": "custom", **{f"model.{k}": v for k, v in fields.items()},
            "data.vocab_size": self.config.vocab_size}


def import_hf(directory: str) -> Imported:
  """Reads an HF BertForMaskedLM / GPT2LMHeadModel / BartForConditionalGeneration
  directory as our params."""
  with open(os.path.join(directory, CONFIG)) as f:
    hf_cfg = json.load(f)
  if hf_cfg.get("model_type") in SEPARATE:
    return _import_separate(directory, hf_cfg)
  arch = ARCHS.get(hf_cfg.get("model_type"))
  if arch is None:
    raise ValueError(f"{directory}: model_type={hf_cfg.get('model_type')!r} is not one of "
                     f"{sorted([*ARCHS, *SEPARATE])}")
  hf_cfg = {**arch.hf_defaults(hf_cfg), **{k: v for k, v in hf_cfg.items() if v is not None}}
  cfg = TransformerConfig(**{ours: hf_cfg[key] for ours, key in arch.sizes.items()},
                          **arch.fixed, activation=_activation(hf_cfg[arch.activation_key],
                                                               arch.activation_key))
  tensors = {n if n.startswith(arch.prefix) or n.split(".")[0] in arch.heads
             else arch.prefix + n: t for n, t in load_file(os.path.join(directory, WEIGHTS)).items()}
  shapes, ours, notes = param_shapes(cfg), {}, []
  headless = not any(n.split(".")[0] in arch.heads for n in tensors)
  if headless:  # A base model (HF BertModel, e.g. a sentence encoder): the head stays fresh.
    notes.append(f"{directory} has no {'/'.join(arch.heads)} head tensors: head params "
                 "are left fresh")
  for rule in expand(arch.rules(cfg.tie_embeddings), cfg.num_layers):
    if headless and rule.hf.split(".")[0] in arch.heads:
      continue
    if rule.hf not in tensors:
      raise ValueError(f"{directory}/{WEIGHTS} has no tensor {rule.hf}")
    ours.update(rule.to_ours(tensors.pop(rule.hf).astype(np.float32),
                             [shapes[o] for o in rule.ours]))
  notes += arch.fold_in(tensors, ours, cfg)
  return Imported(cfg, ours, sorted(tensors), notes)


def _activation(name: str, key: str) -> str:
  if name not in FROM_HF_ACT:
    raise ValueError(f"{key}={name!r} has no counterpart here; valid: {sorted(FROM_HF_ACT)}")
  return FROM_HF_ACT[name]


def _import_separate(directory: str, hf_cfg: dict) -> Imported:
  """BART / ViT: modules with their own config and fold functions (no `Arch` table)."""
  module, key = SEPARATE[hf_cfg["model_type"]]
  cfg = module.config_from_hf(hf_cfg, _activation(hf_cfg.get(key, "gelu"), key))
  tensors = load_file(os.path.join(directory, WEIGHTS))
  ours, notes = module.to_ours(tensors, param_shapes(cfg), cfg, hf_cfg)
  defaults = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}
  odd = [k for k in ("relative_buckets", "relative_max_distance")
         if getattr(cfg, k, defaults[k]) != defaults[k]]
  if odd:  # No config key sets them: the imported params are right, --config flags are not.
    notes.append(f"{', '.join(f'{k}={getattr(cfg, k)}' for k in odd)} differ from the "
                 f"built-in T5 values; init_from a run of this model needs them in the code")
  return Imported(cfg, ours, sorted(tensors), notes)


def _arch_for(cfg: TransformerConfig):
  """The HF architecture our config is, or a one-line error naming what does not fit."""
  arch = {("post", True): bert.ARCH, ("pre", False): gpt2.ARCH}.get(
      (cfg.norm, cfg.head_transform))
  want = dict(norm_type="layernorm", fused_qkv=False, scan_layers=False, use_bias=True,
              **(arch.fixed if arch else {}))
  wrong = {k: getattr(cfg, k) for k, v in want.items() if getattr(cfg, k) != v}
  if cfg.activation not in TO_HF_ACT:
    wrong["activation"] = cfg.activation
  if wrong or arch is None:
    raise ValueError(f"export_hf: no HF BertForMaskedLM/GPT2LMHeadModel layout for "
                     f"{wrong or dict(norm=cfg.norm, head_transform=cfg.head_transform)}")
  return arch


def export_hf(params, cfg: TransformerConfig, directory: str) -> list[str]:
  """Writes our params (a pure params tree) as an HF directory; returns notes on what
  was folded or dropped."""
  ours = {k: np.asarray(v) for k, v in by_path(params).items()}
  module = {EncoderDecoderConfig: t5 if cfg.pos_emb == "relative" else bart,
            ViTConfig: vit}.get(type(cfg))
  if module is not None:
    wrong = module.check_exportable(cfg)
    activations = getattr(module, "ACTIVATIONS", TO_HF_ACT)
    if cfg.activation not in activations:
      wrong["activation"] = cfg.activation
    if wrong:
      raise ValueError(f"export_hf: no HF {module.ARCHITECTURE} layout for {wrong}")
    dropped = sorted(k for k in ours if module is vit and not k.startswith(vit.OURS))
    for k in dropped:
      del ours[k]
    tensors, notes = module.to_hf(ours, cfg)
    notes += ["MAE decoder not exported (ViTModel is the encoder)"] if dropped else []
    architecture = module.ARCHITECTURE
    hf_cfg = module.hf_config(cfg, activations[cfg.activation])
  else:
    arch, tensors = _arch_for(cfg), {}
    for rule in expand(arch.rules(cfg.tie_embeddings), cfg.num_layers):
      tensors[rule.hf] = rule.to_hf([ours.pop(o) for o in rule.ours])
    notes = arch.fold_out(ours, tensors, cfg)
    architecture = arch.architecture
    hf_cfg = {"architectures": [arch.architecture], "model_type": arch.model_type,
              **{key: getattr(cfg, ours) for ours, key in arch.sizes.items()},
              arch.activation_key: TO_HF_ACT[cfg.activation], "dtype": "float32",
              **arch.extra_config}
  if ours:
    raise ValueError(f"export_hf: no {architecture} tensor for {sorted(ours)}")
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  save_file(tensors, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
  return notes


def load_run(workdir: str, step: int = -1) -> tuple[dict, TransformerConfig | ViTConfig]:
  """A run's params (numpy, on the host) at `step` (-1 = latest) and its model config."""
  with open(os.path.join(workdir, CONFIG)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.model.name not in BUILDERS:
    raise ValueError(f"{workdir}: model.name={config.model.name!r}; export covers "
                     f"{', '.join(BUILDERS)}")
  params = checkpoint.unflatten(checkpoint.read_params(workdir, step))
  model_cfg = base_config().model  # defaults for keys newer than the run (embed_norm)
  model_cfg.update(config.model)
  if config.model.name == "mae":  # image size and channels as the recipe states them
    info = DataInfo()
  else:  # The encoder-decoder builder adds extra_ids to the data's vocabulary; the table has both.
    extra = model_cfg.get("extra_ids", 0) if config.model.name == "encoder_decoder" else 0
    info = DataInfo(vocab_size=params["embed"]["table"].shape[0] - extra)
  return params, BUILDERS[config.model.name].model_config(model_cfg, info)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m pretrain.hf.convert")
  commands = parser.add_subparsers(dest="command", required=True)
  export = commands.add_parser("export", help="a run's checkpoint -> an HF directory")
  export.add_argument("--workdir", required=True)
  export.add_argument("--out", required=True)
  export.add_argument("--step", type=int, default=-1)
  imp = commands.add_parser("import", help="an HF directory -> the config flags that fit it")
  imp.add_argument("--hf", required=True)
  args = parser.parse_args(argv)
  try:
    if args.command == "export":
      notes = export_hf(*load_run(args.workdir, args.step), args.out)
      print(f"wrote {args.out}/{CONFIG} and {WEIGHTS}")
    else:
      imported = import_hf(args.hf)
      print(" ".join(f"--config.{k}={v}" for k, v in imported.overrides.items()),
            f"--config.init_from.path={args.hf}")
      notes = imported.notes + [f"unused: {n}" for n in imported.unused]
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for note in notes:
    print(f"note: {note}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
