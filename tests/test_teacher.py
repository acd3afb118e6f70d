"""Teachers in the train state (frozen, EMA, another size, checkpointed), the MiniLM and
pre-trained-distillation losses against NumPy, the teacher's tokenizer.json as data
tokenizer, paper sizes by parameter count, and both tiny recipes through `pretrain.main`
(MiniLM with the real all-MiniLM-L6-v2 as teacher)."""
from __future__ import annotations

import importlib.util
import math
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

import objectives  # noqa: F401  (registers objectives)
from configs import minilm as minilm_recipe
from configs import pd as pd_recipe
from models.attention import attention_logits, attention_mask
from models.transformer import TextTransformer, TransformerConfig
from objectives import minilm, mlm
from objectives.base import DataInfo, ModelDef, Teacher, kl_divergence
from pretrain import aot, checkpoint, main as main_lib, sharding, train
from pretrain import steps as run_steps
from pretrain import config as config_lib
from pretrain.data.packing import pack_documents
from pretrain.data.tokenizer import load_tokenizer_file
from pretrain.registry import MODELS, OBJECTIVES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, VOCAB = 16, 40
INFO = DataInfo(seq_len=SEQ, vocab_size=VOCAB, pad_id=0, mask_id=4, special_ids=(0, 1, 2, 3, 4))
STUDENT = dict(variant="custom", num_layers=1, d_model=16, num_heads=2, d_ff=32, max_len=SEQ)
BIGGER = dict(variant="custom", num_layers=2, d_model=32, num_heads=2, d_ff=64)
MINILM_DIR = minilm_recipe.minilm_l6_dir()


def _rows(num: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Packed rows of random documents (ids 5..VOCAB-2, eos VOCAB-1) with padding."""
  rng = np.random.default_rng(seed)
  docs = [rng.integers(5, VOCAB - 1, rng.integers(3, 12)).astype(np.int32)
          for _ in range(num * 4)]
  packed = pack_documents(docs, [np.ones(len(d), bool) for d in docs], SEQ, VOCAB - 1)
  rows = {k: v[:num] for k, v in packed.items()}
  rows["segment_ids"][:, -3:] = 0  # Some padding at the end of every row.
  rows["tokens"][:, -3:] = 0
  return rows


def _mlm_batch(num: int, seed: int = 0) -> dict[str, np.ndarray]:
  rows = _rows(num, seed)
  masking = OBJECTIVES.get("mlm").host_transform(_config("none"), INFO)
  examples = [masking.random_map({k: v[i] for k, v in rows.items()},
                                 np.random.default_rng(seed + i)) for i in range(num)]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _config(kind: str, teacher_model: dict | None = None, **teacher) -> ml_collections.ConfigDict:
  c = pd_recipe.get_config("tiny")
  c.model.update(STUDENT)
  c.data.seq_len = SEQ
  c.train.update(steps=5, global_batch=4)
  c.optim.update(lr=1e-2, warmup_steps=0, schedule="constant")
  c.teacher.kind = kind
  c.teacher.model = ml_collections.ConfigDict(teacher_model or {})
  c.teacher.update(teacher)
  return c


def _run(config, objective="distill_mlm"):
  import pretrain.model_builders  # noqa: F401  (registers models)

  model_cfg = MODELS.get("transformer").model_config(config.model, INFO)
  return train.build_run(config, OBJECTIVES.get(objective), INFO, model_cfg, None, None)


def _train(run, steps: int):
  """(state after each step as host arrays, starting with the initial state), metrics."""
  with sharding.activation_context(run.mesh, run.rules):
    _, shardings = train.sharded_abstract_state(run)
    state = jax.jit(train.init_state_fn(run), out_shardings=shardings)(
        train.init_rng(run.config))
    step = run_steps.make_train_step(run, shardings)
    history, out = [jax.device_get(state)], None
    for i in range(steps):
      batch = sharding.global_batch(_mlm_batch(4, seed=10 * i), run.mesh)
      state, out = step(state, batch)
      history.append(jax.device_get(state))
  return history, out


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


# --- the teacher mechanism ----------------------------------------------------------------


def test_frozen_teacher_of_another_size_is_bit_identical_after_training():
  run = _run(_config("frozen", BIGGER))
  history, out = _train(run, 3)
  first, last = history[0], history[-1]
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(first["teacher"]),
                                                   _leaves(last["teacher"])))
  assert not np.allclose(first["params"]["embed"]["table"], last["params"]["embed"]["table"])
  # The teacher has its own (bigger) shapes, and no optimizer state: Adam's moments mirror
  # the student's params only.
  assert last["teacher"]["stack"]["blocks"][1]["mlp"]["wi"]["kernel"].shape == (32, 64)
  assert last["params"]["embed"]["table"].shape == (128, 16)
  assert sum(x.size for x in _leaves(last["opt_state"])) < 3 * sum(
      x.size for x in _leaves(last["params"])) + 16
  assert np.isfinite(float(out["loss"])) and "teacher_agreement" in out


def test_teacher_is_sharded_by_its_logical_axes():
  run = _run(_config("frozen", BIGGER))
  _, shardings = train.sharded_abstract_state(run)
  expected = sharding.param_shardings(run.teacher.abstract_params, run.mesh, run.rules)
  assert jax.tree.structure(shardings["teacher"]) == jax.tree.structure(expected)


EMA_BASE, EMA_STEPS = 0.8, 3


@pytest.fixture(scope="module")
def ema_run():
  """A cosine-EMA run's states after each step (one compile for the two tests below)."""
  run = _run(_config("ema", ema_momentum=EMA_BASE, ema_schedule="cosine"))
  return run, _train(run, EMA_STEPS)[0]


def test_ema_teacher_follows_the_formula_in_numpy(ema_run):
  run, history = ema_run
  base, steps = EMA_BASE, EMA_STEPS
  teacher = [x.astype(np.float64) for x in _leaves(history[0]["params"])]  # starts = student
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(history[0]["teacher"]),
                                                   _leaves(history[0]["params"])))
  for s in range(steps):
    m = 1 - (1 - base) * (math.cos(math.pi * s / run.config.train.steps) + 1) / 2
    student = _leaves(history[s + 1]["params"])
    teacher = [m * t + (1 - m) * p.astype(np.float64) for t, p in zip(teacher, student)]
    for got, want in zip(_leaves(history[s + 1]["teacher"]), teacher):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(_leaves(history[-1]["teacher"])[0], _leaves(history[-1]["params"])[0])


def test_teacher_is_saved_and_restored_with_the_checkpoint(tmp_path, ema_run):
  run, history = ema_run
  with sharding.activation_context(run.mesh, run.rules):
    target, _ = train.sharded_abstract_state(run)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1)
    ckpt.save(2, history[-1], {"global_batches": 2})
    ckpt.wait()
    step, restored, _ = ckpt.restore_latest(target)
    ckpt.close()
  assert step == 2
  for got, want in zip(_leaves(restored["teacher"]), _leaves(history[-1]["teacher"])):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("recipe,args,expected", [
    ("pd.py:tiny", ["--config.teacher.kind=none"], "objective 'distill_mlm' distils a teacher"),
    ("bert.py:tiny", ["--config.teacher.kind=ema"], "objective 'mlm' takes no teacher"),
    ("pd.py:tiny", ["--config.teacher.kind=best"], "teacher.kind='best'; valid: none"),
    ("pd.py:tiny", ["--config.teacher.path=/no/such"], "teacher.path='/no/such': no such"),
    ("pd.py:tiny", ["--config.teacher.kind=ema"], "leave teacher.model empty"),
    ("pd.py:tiny", ["--config.teacher.model.variant=bert:huge"], "unknown BERT size 'huge'"),
    ("minilm.py:tiny", ["--config.model.num_heads=6", "--config.model.d_model=96"],
     "model.num_heads=6 but the teacher has 12"),
    ("minilm.py:tiny", ["--config.model.scan_layers=true"], "model.scan_layers=True: minilm"),
    ("minilm.py:tiny", ["--config.data.tokenizer_file=/no/tok.json"],
     "data.tokenizer_file='/no/tok.json': no such file"),
])
def test_bad_teacher_settings_are_one_line_errors(tmp_path, capsys, recipe, args, expected):
  code = main_lib.main([f"--config={ROOT}/configs/{recipe}", f"--workdir={tmp_path}/r", *args])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err
  assert not (tmp_path / "r").exists()


# --- losses against NumPy -----------------------------------------------------------------


def _split(cfg_dict, seed):
  cfg = TransformerConfig(vocab_size=128, max_len=SEQ, norm="post", embed_norm=True,
                          init_std=0.3, **{k: v for k, v in cfg_dict.items()
                                           if k not in ("variant", "max_len")})
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(TextTransformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
  return ModelDef(graphdef), nnx.to_pure_dict(state)


def _log_softmax(x, allowed):
  x = np.where(allowed, x, -np.inf)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_minilm_loss_matches_numpy_kl():
  student_def, student = _split(STUDENT, 0)
  teacher_def, teacher = _split(dict(BIGGER, num_heads=2), 1)
  batch = _rows(3)
  loss, aux = OBJECTIVES.get("minilm").loss_fn(
      student, batch, None, model=student_def, config=None,
      teacher=Teacher(teacher_def, teacher))
  seg = batch["segment_ids"]
  allowed = ((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0))[:, None]  # B1LL
  real = np.broadcast_to((seg > 0)[:, None, :], (seg.shape[0], 2, SEQ))

  def relations(model_def, params):
    mask = attention_mask("bidirectional", segment_ids=seg)
    q, k, v = (np.asarray(t, np.float64) for t in model_def.bind(params).last_attention_qkv(
        batch["tokens"], mask=mask, positions=batch["positions"]))
    scale = q.shape[-1] ** -0.5
    return (_log_softmax(np.einsum("bqhd,bkhd->bhqk", q, k) * scale, allowed),
            _log_softmax(np.einsum("bqhd,bkhd->bhqk", v, v) * scale, allowed))

  want = []
  for s, t in zip(relations(student_def, student), relations(teacher_def, teacher)):
    kl = np.where(allowed, np.exp(t) * (t - np.where(allowed, s, 0)), 0).sum(-1)  # (B,H,L)
    want.append((kl * real).sum() / real.sum())
  np.testing.assert_allclose(float(aux["attention_kl"]), want[0], rtol=1e-4)
  np.testing.assert_allclose(float(aux["value_relation_kl"]), want[1], rtol=1e-4)
  np.testing.assert_allclose(float(loss), sum(want), rtol=1e-4)
  assert want[0] > 0.01 and want[1] > 0.01


def test_last_attention_qkv_projects_the_last_block_input():
  """One post-LN layer: q, k, v are the embeddings times the projections, by hand."""
  model_def, params = _split(STUDENT, 2)
  net = model_def.bind(params)
  rows = _rows(2)
  q, k, v = net.last_attention_qkv(rows["tokens"], mask=None, positions=rows["positions"])
  x = np.asarray(net.embed_tokens(rows["tokens"], rows["positions"]), np.float64)
  attn = params["stack"]["blocks"][0]["attn"]
  for got, name in zip((q, k, v), ("query", "key", "value")):
    want = np.einsum("bld,dhk->blhk", x, np.asarray(attn[name]["kernel"], np.float64))
    np.testing.assert_allclose(got, want + np.asarray(attn[name]["bias"]), rtol=1e-4,
                               atol=1e-5)


def test_minilm_packed_segments_do_not_see_each_other():
  """Changing the second document of a row leaves the first one's per-query KL unchanged."""
  student_def, student = _split(STUDENT, 0)
  teacher_def, teacher = _split(BIGGER, 1)
  batch = _rows(1)
  seg = batch["segment_ids"][0]
  assert seg.max() >= 2
  other = dict(batch, tokens=np.where(batch["segment_ids"] >= 2, 7, batch["tokens"]))

  def first_segment_kl(b):
    s = minilm.relation_logits(student_def.bind(student), b)
    t = minilm.relation_logits(teacher_def.bind(teacher), b)
    return [np.asarray(kl_divergence(tt, ss))[..., seg == 1] for tt, ss in zip(t, s)]

  for a, b in zip(first_segment_kl(batch), first_segment_kl(other)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_distill_mlm_loss_matches_numpy_soft_cross_entropy():
  student_def, student = _split(STUDENT, 0)
  teacher_def, teacher = _split(BIGGER, 1)
  batch = _mlm_batch(3)
  loss, aux = OBJECTIVES.get("distill_mlm").loss_fn(
      student, batch, None, model=student_def, config=None,
      teacher=Teacher(teacher_def, teacher))
  s = np.asarray(mlm.masked_logits(student_def.bind(student), batch), np.float64)
  t = np.asarray(mlm.masked_logits(teacher_def.bind(teacher), batch), np.float64)
  log_s = s - s.max(-1, keepdims=True)
  log_s -= np.log(np.exp(log_s).sum(-1, keepdims=True))
  p_t = np.exp(t - t.max(-1, keepdims=True))
  p_t /= p_t.sum(-1, keepdims=True)
  w = batch["masked_weights"]
  want = (-(p_t * log_s).sum(-1) * w).sum() / w.sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  agree = ((s.argmax(-1) == t.argmax(-1)) * w).sum() / w.sum()
  np.testing.assert_allclose(float(aux["teacher_agreement"]), agree, rtol=1e-6)
  entropy = (-(p_t * np.log(p_t)).sum(-1) * w).sum() / w.sum()
  np.testing.assert_allclose(float(aux["teacher_entropy"]), entropy, rtol=1e-5)


# --- the teacher's tokenizer and paper sizes ----------------------------------------------


def test_tokenizer_file_is_the_teachers_without_truncation_or_padding():
  import tokenizers

  path = os.path.join(MINILM_DIR, "tokenizer.json")
  tok = load_tokenizer_file(path, "wordpiece")
  assert (tok.pad_id, tok.mask_id, tok.vocab_size) == (0, 103, 30522)
  text = " ".join(["Shall I compare thee to a summer's day?"] * 40)
  ids, word_start = tok.encode(text)
  raw = tokenizers.Tokenizer.from_file(path)
  raw.no_truncation()
  assert len(ids) > 128 and list(ids) == raw.encode(text, add_special_tokens=False).ids
  assert word_start[0] and word_start.sum() == 40 * 8  # "summer's" and "day?" are words.
  with pytest.raises(ValueError, match="lacks the special tokens"):
    load_tokenizer_file(path, "bpe")


def test_imported_minilm_teacher_matches_transformers_attention():
  """The teacher MiniLM distils, read through pretrain.hf, has HF BertModel's last-layer
  attention probabilities and hidden states (token type 0, as ours)."""
  torch = pytest.importorskip("torch", reason="needs the hf extra (torch)")
  transformers = pytest.importorskip("transformers", reason="needs the hf extra")
  from pretrain.hf import convert

  imported = convert.import_hf(MINILM_DIR)
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(TextTransformer(imported.config, rngs=nnx.Rngs(0)), nnx.Param)
  params = nnx.to_pure_dict(state)
  flat = convert.by_path(params)
  missing = {name.split("/")[0] for name in set(flat) - set(imported.params)}
  assert missing == {"head_dense", "head_norm", "logits_bias"}  # a BertModel has no MLM head
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: imported.params.get(jax.tree_util.keystr(p, simple=True, separator="/"), x),
      params)
  tok = load_tokenizer_file(os.path.join(MINILM_DIR, "tokenizer.json"), "wordpiece")
  ids = tok.encode("to be, or not to be, that is the question")[0][None]
  net = ModelDef(graphdef).bind(params)
  q, k, _ = net.last_attention_qkv(ids, mask=None)
  ours = np.asarray(jax.nn.softmax(attention_logits(q, k, None), -1))
  hidden = np.asarray(net(ids, mask=None))
  hf = transformers.BertModel.from_pretrained(MINILM_DIR, attn_implementation="eager").eval()
  with torch.no_grad():
    out = hf(torch.as_tensor(ids, dtype=torch.long), output_attentions=True)
  np.testing.assert_allclose(ours, out.attentions[-1].numpy(), atol=2e-5)
  np.testing.assert_allclose(hidden, out.last_hidden_state.numpy(), atol=2e-4)


def _param_count(config) -> int:
  import pretrain.model_builders  # noqa: F401

  builder = MODELS.get("transformer")
  cfg = builder.model_config(config.model, DataInfo(vocab_size=config.data.vocab_size))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("recipe,variant,paper", [
    # MiniLM (Wang et al. 2020) Table 2: the 6 x 768 student has 66M params.
    ("minilm", "L6_H768", 66e6),
    # Turc et al. 2019 Table 1 (student sizes): Tiny 4.4M, Mini 11.3M, Small 29.1M,
    # Medium 41.7M.
    ("pd", "L-2_H-128", 4.4e6), ("pd", "mini", 11.3e6), ("pd", "small", 29.1e6),
    ("pd", "medium", 41.7e6),
])
def test_paper_students_build_abstractly_with_the_paper_param_count(recipe, variant, paper):
  module = {"minilm": minilm_recipe, "pd": pd_recipe}[recipe]
  count = _param_count(module.get_config(variant))
  assert abs(count / paper - 1) < 0.02, (variant, count)


# --- end to end ---------------------------------------------------------------------------


def _losses(workdir) -> list[float]:
  return [r["loss"] for r in train.read_metrics(str(workdir)) if "loss" in r]


def test_minilm_tiny_distils_all_minilm_l6_v2_through_main(tmp_path, capsys):
  args = ["--config.train.steps=30", "--config.train.log_every=5",
          "--config.train.checkpoint_every=30"]
  assert main_lib.main([f"--config={ROOT}/configs/minilm.py:tiny", f"--workdir={tmp_path}",
                        *args]) == 0
  out = capsys.readouterr().out
  # Every encoder tensor of the HF checkpoint loads (the vocab padded 30522 -> 30592); only
  # the MLM logits bias, which a BertModel lacks and MiniLM never reads, stays fresh.
  assert "teacher: 100 matched, 0 reshaped->fresh, 1 fresh" in out, out
  curve = _losses(tmp_path)
  assert np.mean(curve[-2:]) < 0.75 * np.mean(curve[:2]), curve


def test_pretrained_distillation_tiny_through_main(tmp_path, capsys):
  """A tiny BERT-mini teacher trained with MLM, then distilled into BERT-tiny; resuming the
  student restores its teacher from the checkpoint instead of reloading teacher.path."""
  teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
  assert main_lib.main([f"--config={ROOT}/configs/bert.py:tiny", f"--workdir={teacher_dir}",
                        "--config.model.variant=bert:mini", "--config.train.steps=10",
                        "--config.train.eval_every=0"]) == 0
  common = [f"--config={ROOT}/configs/pd.py:tiny", f"--workdir={student_dir}",
            f"--config.teacher.path={teacher_dir}", "--config.train.log_every=5",
            "--config.train.eval_every=0", "--config.train.checkpoint_every=20"]
  assert main_lib.main([*common, "--config.train.steps=20"]) == 0
  assert "teacher: 73 matched, 0 reshaped->fresh, 0 fresh, 0 unused" in capsys.readouterr().out
  records = [r for r in train.read_metrics(str(student_dir)) if "loss" in r]
  kl = [r["loss"] - r["teacher_entropy"] for r in records]  # >= 0, 0 = the teacher's
  assert min(kl) >= 0 and kl[-1] < 0.5 * kl[0], kl
  # Resume: a moved-away teacher run must not matter, the checkpoint holds the teacher.
  os.rename(teacher_dir, tmp_path / "gone")
  os.makedirs(teacher_dir)
  assert main_lib.main([*common, "--config.train.steps=21"]) == 0
  out = capsys.readouterr().out
  assert "resumed from" in out and "teacher:" not in out


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed")
def test_distillation_step_with_its_teacher_compiles_for_a_tpu_slice():
  """`pretrain.aot` compiles the step with the teacher in the state, sharded over 16 chips."""
  config = config_lib.load_config_file(f"{ROOT}/configs/pd.py:tiny")
  config_lib.apply_override(config, "topology", "v5e-16")
  report = aot.compile_step(config, "pd:tiny")
  assert report.fits and report.chips == 16 and report.model_flops > 0


def test_minilm_teacher_assistant_chain_through_main(tmp_path, capsys):
  """MiniLM §3.3: all-MiniLM-L6-v2 -> a 2 x 384 assistant (the student's depth, the
  teacher's width) -> the 2 x 192 student, each stage a run of configs/minilm.py whose
  teacher.path is the stage before; every stage's distillation loss falls."""
  assistant, student = tmp_path / "assistant", tmp_path / "student"
  args = ["--config.train.steps=10", "--config.train.log_every=2",
          "--config.train.eval_every=0", "--config.optim.warmup_steps=2",
          "--config.data.seq_len=32"]
  assert main_lib.main([f"--config={ROOT}/configs/minilm.py:tiny_assistant",
                        f"--workdir={assistant}", *args]) == 0
  assert main_lib.main([f"--config={ROOT}/configs/minilm.py:tiny_from_assistant",
                        f"--workdir={student}", f"--config.teacher.path={assistant}",
                        *args]) == 0
  out = capsys.readouterr().out
  # The assistant loads every param of the student-to-be's teacher: nothing fresh, none left.
  assert "teacher: 37 matched, 0 reshaped->fresh, 0 fresh, 0 unused" in out, out
  for workdir in (assistant, student):
    curve = _losses(workdir)
    assert np.mean(curve[-2:]) < 0.8 * np.mean(curve[:2]), (workdir.name, curve)
