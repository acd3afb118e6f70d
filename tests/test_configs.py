"""Recipes resolve and validate for every published size; bad input is a one-line error
raised before anything is built."""
from __future__ import annotations

import os

import pytest

from configs.base import KEY_DOCS, flatten_keys
from models.variants import _BERT
from pretrain import config as config_lib
from pretrain import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ([("bert", v) for v in ("tiny", "base", "large", *sorted(_BERT))]
            + [("gpt", v) for v in ("tiny", "small", "medium", "large", "xl")]
            + [("mae", v) for v in ("tiny", "B/16", "L/16", "H/14")]
            + [("t5", v) for v in ("tiny", "small", "base", "large")]
            + [("prefix_lm", v) for v in ("tiny", "xl")]
            + [("pubmedbert", v) for v in ("tiny", "base")]
            + [("sobert", v) for v in ("tiny", "base", "large")]
            + [("metagene", v) for v in ("tiny", "7b")]
            + [("snowcoder", v) for v in ("tiny", "1.3b")]
            + [("bart", v) for v in ("tiny", "base", "large")]
            + [("e2s2", v) for v in ("tiny", "large")]
            + [("bioptimus", v) for v in ("tiny", "base")]
            + [("drbert", v) for v in ("tiny", "base")]
            + [("unixcoder", v) for v in ("tiny", "base")]
            + [("ernie3", v) for v in ("tiny", "10b")]
            + [("multi_token", v) for v in ("tiny", "7B")]
            + [("ftp", v) for v in ("tiny", "gpt2-small")]
            + [("next_block", v) for v in ("tiny", "700M", "1.2B", "3B")]
            + [("codet5", v) for v in ("tiny", "small", "base")]
            + [("codet5_bimodal", v) for v in ("tiny", "small", "base")]
            + [("graphcodebert", v) for v in ("tiny", "base")]
            + [("minilm", v) for v in ("tiny", "L6_H768")]
            + [("pd", v) for v in ("tiny", "L-2_H-128", "mini", "small", "medium")]
            + [("arch_grid", f"{size}{cell}") for size in ("tiny:", "")
               for cell in ("cd_flm", "cd_mlm", "nd_plm", "nd_mlm", "ed_plm", "ed_mlm")]
            + [("ttm", v) for v in ("tiny", "512-96")]
            + [("dino", v) for v in ("tiny", "B/14")]
            + [("mr_mae", v) for v in ("tiny", "B/16")]
            + [("self_distill", v) for v in ("tiny_teacher", "tiny_student", "B/16_teacher",
                                             "B/16_student")]
            + [("retromae", v) for v in ("tiny", "base")]
            + [("starbucks", v) for v in ("tiny", "base")]
            + [("contrabert", v) for v in ("tiny", "base")]
            + [("cropmae", v) for v in ("tiny", "S/16")]
            + [("cae", v) for v in ("tiny", "B/16")]
            + [("token_unify", v) for v in ("tiny", "base")]
            + [("i2p_mae", v) for v in ("tiny", "point_mae")]
            + [("gmml", v) for v in ("tiny", "S/16")]
            + [("position_prediction", v) for v in ("tiny", "B/16")]
            + [("ssast", v) for v in ("tiny", "patch-base", "frame-base")]
            + [("tera", v) for v in ("tiny", "base", "medium", "large")]
            + [("videomae", v) for v in ("tiny", "B", "g")]
            + [("vitok", v) for v in ("tiny", "tiny_video", "S-B/16", "S-B/4x8")]
            + [("predformer", v) for v in ("tiny", "mmnist", "mmnist_full", "mmnist_factorized")]
            + [("next_block", "tiny_video")]
            + [("clip", v) for v in ("tiny", "B/32")]
            + [("alip", v) for v in ("tiny", "B/32")]
            + [("m3ae", v) for v in ("tiny", "B/16")]
            + [(r, v) for r in ("classify", "look", "ssld", "ibot") for v in ("tiny", "B/16")]
            + [("minilm", v) for v in ("tiny_assistant", "tiny_from_assistant",
                                       "L6_H384_from_assistant")]
            + [("multimae", v) for v in ("tiny", "B/16")]
            + [(r, v) for r in ("classify", "look") for v in ("tiny_resnet", "R50")]
            + [("spark", v) for v in ("tiny", "resnet50")])


def load(recipe: str, variant: str):
  return config_lib.load_config_file(os.path.join(ROOT, "configs", f"{recipe}.py:{variant}"))


@pytest.mark.parametrize("recipe,variant", VARIANTS)
def test_every_paper_variant_validates_and_is_documented(recipe, variant):
  config = load(recipe, variant)
  config_lib.validate(config, num_devices=1)
  undocumented = [k for k in flatten_keys(config) if k not in KEY_DOCS]
  assert not undocumented


def test_no_stale_docs():
  used = {k for recipe, variant in VARIANTS for k in flatten_keys(load(recipe, variant))}
  assert sorted(set(KEY_DOCS) - used) == []


def test_miniature_grid_is_complete():
  """All 24 Well-Read Students miniatures resolve to their L and H."""
  for layers in (2, 4, 6, 8, 10, 12):
    for hidden in (128, 256, 512, 768):
      model = load("bert", f"L-{layers}_H-{hidden}").model
      assert model.variant == f"bert:L-{layers}_H-{hidden}"


def test_override_types_are_parsed():
  config = load("gpt", "tiny")
  config_lib.apply_override(config, "train.steps", "7")
  config_lib.apply_override(config, "optim.lr", "1e-3")
  config_lib.apply_override(config, "objective.name", "mlm")
  config_lib.apply_override(config, "model.tie_embeddings", "false")
  assert (config.train.steps, config.optim.lr, config.model.tie_embeddings) == (7, 1e-3, False)


@pytest.mark.parametrize("args,expected", [
    (["--config.train.stepz=3"], "unknown config key 'train.stepz'; valid keys in train:"),
    (["--config.nosuch.key=3"], "unknown config key 'nosuch.key'"),
    (["--config.train.steps=abc"], "--config.train.steps=abc: expected a int"),
    (["--config.train.steps=2.5"], "expected an integer"),
    (["--config.objective.name=bert"], "objective.name='bert'; valid: "),
    (["--config.model.variant=gpt2:huge"], "unknown GPT-2 size 'huge'"),
    (["--config.data.source=mnist"], "data.source='mnist' cannot feed objective 'causal_lm'"),
    (["--config.optim.schedule=step"], "optim.schedule='step'; valid: cosine, linear, constant"),
    (["--config.mesh.tensor=3"], "devices are not divisible by the fixed mesh axes"),
    (["--config.train.grad_accum=3"], "train.global_batch=16 is not divisible by train.grad_accum=3"),
    (["--config.init_from.path=/no/such/run"], "init_from.path='/no/such/run': no such directory"),
    (["--bogus"], "unknown argument '--bogus'"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, args, expected):
  workdir = tmp_path / "run"
  code = main_lib.main([f"--config={ROOT}/configs/gpt.py:tiny", f"--workdir={workdir}", *args])
  err = capsys.readouterr().err
  assert code == 2
  assert expected in err, err
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert not workdir.exists()  # nothing was built or written


def test_missing_config_file_lists_recipes(capsys):
  assert main_lib.main(["--config=configs/nope.py:tiny", "--workdir=/tmp/x"]) == 2
  err = capsys.readouterr().err
  assert "no such file 'configs/nope.py'" in err and "configs/bert.py" in err


def test_describe_prints_every_key_with_docs(capsys):
  assert main_lib.main([f"--config={ROOT}/configs/bert.py:tiny", "--describe"]) == 0
  out = capsys.readouterr().out
  assert "train.steps = 60" in out and "UNDOCUMENTED" not in out
