"""Import and export of Hugging Face `config.json` + `model.safetensors` directories:
BertForMaskedLM and GPT2LMHeadModel (rule tables in `Arch`), BartForConditionalGeneration
(pretrain/hf/bart.py), T5ForConditionalGeneration (pretrain/hf/t5.py), ViTModel
(pretrain/hf/vit.py, as MAE's encoder), CLIPModel (pretrain/hf/clip.py) and
ViTMAEForPreTraining (pretrain/hf/vit.py, MAE's encoder and decoder; export on request).

  python -m pretrain.hf.convert export --workdir=runs/bert --out=hf/bert [--step=N]
  python -m pretrain.hf.convert export --workdir=runs/mae --out=hf/mae \
      --architecture=ViTMAEForPreTraining    # default for an MAE run: ViTModel (the encoder)
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
from models.clip import CLIP, CLIPConfig
from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from models.transformer import TextTransformer, TransformerConfig
from models.vit import MAE, ViTConfig
from objectives.base import DataInfo
from pretrain import checkpoint
from pretrain.hf import bart, bert, clip, gpt2, t5, vit
from pretrain.hf.layout import expand
from pretrain.model_builders import (ClipBuilder, EncoderDecoderBuilder, MaeBuilder,
                                     TransformerBuilder)

ARCHS = {a.model_type: a for a in (bert.ARCH, gpt2.ARCH)}
# model_type -> (module with config_from_hf / to_ours / to_hf, HF activation config key)
# (keys of nested configs joined by ".")
SEPARATE = {bart.MODEL_TYPE: (bart, "activation_function"), vit.MODEL_TYPE: (vit, "hidden_act"),
            vit.MAE_TYPE: (vit, "hidden_act"), t5.MODEL_TYPE: (t5, "feed_forward_proj"),
            clip.MODEL_TYPE: (clip, clip.ACTIVATION_KEY)}
CONFIG, WEIGHTS = "config.json", "model.safetensors"
BUILDERS = {"transformer": TransformerBuilder(), "encoder_decoder": EncoderDecoderBuilder(),
            "mae": MaeBuilder(), "clip": ClipBuilder()}
# Our activation -> the HF name export writes (HF "gelu" is erf, "gelu_new" the tanh form);
# import also reads "gelu_pytorch_tanh", the same tanh form.
TO_HF_ACT = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "quick_gelu": "quick_gelu"}
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
  module = {EncoderDecoderConfig: EncoderDecoder, ViTConfig: MAE, CLIPConfig: CLIP}.get(
      type(cfg), TextTransformer)
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
    if isinstance(self.config, CLIPConfig):
      v, t = self.config.vision, self.config.text
      return {"model.name": "clip", "model.variant": "custom", "model.num_layers": v.num_layers,
              "model.d_model": v.d_model, "model.num_heads": v.num_heads, "model.d_ff": v.d_ff,
              "model.patch_size": v.patch_size, "model.pos_emb": "learned",
              "model.activation": v.activation, "model.ln_eps": v.ln_eps,
              "model.text_layers": t.num_layers, "model.text_d_model": t.d_model,
              "model.text_heads": t.num_heads, "model.text_d_ff": t.d_ff,
              "model.max_len": t.max_len, "model.embed_dim": self.config.embed_dim,
              "data.vocab_size": t.vocab_size}
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
  value = hf_cfg
  for part in key.split("."):
    value = value.get(part, {})
  cfg = module.config_from_hf(hf_cfg, _activation(value or "gelu", key))
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


def export_hf(params, cfg: TransformerConfig, directory: str, architecture: str | None = None,
              objective: dict | None = None) -> list[str]:
  """Writes our params (a pure params tree) as an HF directory; returns notes on what
  was folded or dropped. `architecture`: None writes the config's HF counterpart (an MAE's
  encoder as ViTModel); "ViTMAEForPreTraining" writes an MAE whole, with `objective`'s
  mask_ratio and norm_pix_loss (default: configs/mae.py's 0.75 and True) in its config."""
  ours = {k: np.asarray(v) for k, v in by_path(params).items()}
  module = {EncoderDecoderConfig: t5 if getattr(cfg, "pos_emb", "") == "relative" else bart,
            ViTConfig: vit, CLIPConfig: clip}.get(type(cfg))
  if architecture not in (None, getattr(module, "ARCHITECTURE", None)):
    if architecture != vit.MAE_ARCHITECTURE or module is not vit:
      raise ValueError(f"export_hf: architecture={architecture!r} does not fit a "
                       f"{type(cfg).__name__}; valid: None (its default)"
                       + (f", {vit.MAE_ARCHITECTURE}" if module is vit else ""))
    if "mask_token" not in ours:
      raise ValueError(f"export_hf: {vit.MAE_ARCHITECTURE} needs an MAE's decoder, and these "
                       "params have none (no mask_token): export ViTModel instead")
  if architecture == vit.MAE_ARCHITECTURE:
    wrong = vit.check_exportable(cfg)
    if cfg.activation not in TO_HF_ACT:
      wrong["activation"] = cfg.activation
    if wrong:
      raise ValueError(f"export_hf: no HF {architecture} layout for {wrong}")
    tensors, notes = vit.to_hf_mae(ours, cfg)
    objective = objective or {}
    hf_cfg = vit.hf_mae_config(cfg, TO_HF_ACT[cfg.activation],
                               float(objective.get("mask_ratio", 0.75)),
                               bool(objective.get("norm_pix_loss", True)))
    if hf_cfg["norm_pix_loss"]:
      notes.append("norm_pix_loss: HF divides by the unbiased (n - 1) patch variance, ours "
                   "by the population one: its loss differs slightly")
  elif module is not None:
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
  elif config.model.name == "clip":
    info = DataInfo(vocab_size=params["text"]["embed"]["table"].shape[0])
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
  export.add_argument("--architecture", default=None, choices=[vit.MAE_ARCHITECTURE],
                      help="an MAE run with its decoder (default: the run's usual HF "
                           "counterpart; an MAE's is ViTModel, the encoder)")
  imp = commands.add_parser("import", help="an HF directory -> the config flags that fit it")
  imp.add_argument("--hf", required=True)
  args = parser.parse_args(argv)
  try:
    if args.command == "export":
      with open(os.path.join(args.workdir, CONFIG)) as f:
        objective = json.load(f).get("objective", {})
      notes = export_hf(*load_run(args.workdir, args.step), args.out, args.architecture,
                        objective)
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
