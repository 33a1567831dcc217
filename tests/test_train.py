"""End to end on 8 fake devices: train, checkpoint, resume exactly, refuse a foreign checkpoint,
evaluate and query."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, SIGNALLED_TRAIN, script_env
from jclip.runs.checkpoint import CheckpointMismatchError, Checkpoints, ConfigChangedError
from jclip.runs.metrics import read_metrics
from jclip.training import inputs, loop
from jclip.training.log_window import NonFiniteLossError
from jclip.training.state import init_state, restore_state


def _params(state):
  return jax.tree.leaves(jax.device_get(state.params))


def _assert_same_params(a, b):
  leaves_a, leaves_b = _params(a), _params(b)
  assert len(leaves_a) > 0
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny model trained for 6 steps without interruption: (config, workdir, final state)."""
  from conftest import tiny_clip_config

  config = tiny_clip_config()
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  return config, workdir, loop.train(config, workdir)


def test_training_logs_and_checkpoints(trained):
  config, workdir, state = trained
  assert int(state.step) == config.num_steps
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [2, 4, 6]
  for key in (
    "loss",
    "temperature",
    "logit_scale",
    "temperature_log",
    "learning_rate",
    "pairs_per_sec",
    "data_wait_ms",
    "i2t_accuracy",
    "t2i_accuracy",
  ):
    assert np.isfinite(records[-1][key]), key
  assert np.isclose(records[-1]["logit_scale"], np.exp(records[-1]["temperature_log"]), rtol=1e-4)
  checkpoints = Checkpoints(workdir, create=False)
  assert checkpoints.latest_step() == 6
  assert checkpoints.config().model.text.num_layers == 1  # the config travels with the weights
  assert len(checkpoints.tokenizer_bytes()) > 100


def test_parameters_moved_and_replicas_agree(trained):
  """Training moved the parameters; and one more pmap'd step from the trained state, replicated on
  8 devices with dropout on (every device draws its own masks), leaves all 8 copies of the state
  (parameters, optimiser state, step) identical, bit for bit, and different from before."""
  from jclip.training.step import make_p_train_step, replicate

  config, _, state = trained
  _, fresh = init_state(config)
  moved = [not np.allclose(a, b) for a, b in zip(_params(fresh), _params(state), strict=True)]
  assert len(moved) > 40 and sum(moved) > 0.9 * len(moved), f"{sum(moved)} of {len(moved)} moved"

  assert config.model.text.dropout_rate > 0 and jax.local_device_count() == 8
  rng = np.random.default_rng(0)
  shape = (8, config.batch_size // 8)
  batch = {
    "image": rng.normal(size=(*shape, *[config.data.image_size] * 2, 3)).astype(np.float32),
    "tokens": rng.integers(
      1, config.tokenizer.vocab_size, size=(*shape, config.data.max_text_len)
    ).astype(np.int32),
  }
  replicated, _ = make_p_train_step(config, state.params)(
    replicate(state), batch, jax.random.key(1)
  )
  copies = jax.tree_util.tree_leaves_with_path(jax.device_get(replicated))
  before = jax.tree.leaves(jax.device_get(state))
  assert len(copies) == len(before) > 40
  for (path, leaf_copies), leaf_before in zip(copies, before, strict=True):
    assert leaf_copies.shape == (8, *np.shape(leaf_before)), path
    for device in range(1, 8):
      np.testing.assert_array_equal(
        leaf_copies[device],
        leaf_copies[0],
        err_msg=f"{jax.tree_util.keystr(path)} on device {device}",
      )
  after_params = jax.tree.leaves(jax.device_get(replicated.params))
  assert any(not np.array_equal(a[0], b) for a, b in zip(after_params, _params(state), strict=True))


def test_an_accumulated_step_reads_the_pairs_of_accum_steps_chunks(tiny_config):
  """With accum_steps = 3 every step's batch holds 3 * batch_size pairs, 3 * batch_size / 8 on
  each device: the same stream as steps of batch_size 3 * batch_size without accumulation."""
  from jclip.data.sources import make_source

  class CharTokenizer:
    def encode(self, captions, max_len):
      return np.array([[ord(c) for c in caption[:max_len].ljust(max_len)] for caption in captions])

  source = make_source(tiny_config.data, "train")
  first = lambda config: next(iter(inputs.config_train_batches(config, source, CharTokenizer())))
  tiny_config.accum_steps = 3
  accumulated = first(tiny_config)
  assert accumulated["image"].shape[:2] == accumulated["tokens"].shape[:2] == (8, 6)
  tiny_config.accum_steps, tiny_config.batch_size = 1, 3 * tiny_config.batch_size
  for field, values in first(tiny_config).items():
    np.testing.assert_array_equal(accumulated[field], values, err_msg=field)


def test_killed_run_resumes_to_the_same_parameters(trained, tmp_path, monkeypatch):
  config, _, uninterrupted = trained
  workdir = str(tmp_path)

  class Killed(Exception):
    pass

  def batches_then_crash(*args, **kwargs):
    """The real pipeline, but the process 'dies' when the batch after the first 4 +
    DEVICE_PREFETCH is requested (the loop asks for batches that many steps ahead): steps 1-4
    ran and the checkpoint of step 4 was written."""
    batches = iter(real_train_batches(*args, **kwargs))
    for _ in range(4 + inputs.DEVICE_PREFETCH):
      yield next(batches)
    raise Killed

  real_train_batches = inputs.train_batches
  monkeypatch.setattr(inputs, "train_batches", batches_then_crash)
  with pytest.raises(Killed):
    loop.train(config, workdir)
  monkeypatch.undo()
  assert Checkpoints(workdir, create=False).latest_step() == 4

  resumed = loop.train(config, workdir)  # the same call, as re-running the same command would
  assert int(resumed.step) == config.num_steps
  _assert_same_params(resumed, uninterrupted)
  assert [r["step"] for r in read_metrics(workdir)] == [2, 4, 6]


def test_rerunning_a_finished_run_changes_nothing(trained):
  config, workdir, state = trained
  again = loop.train(config, workdir)
  _assert_same_params(again, state)


def test_foreign_checkpoint_is_refused_and_left_intact(trained):
  config, workdir, _ = trained
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  other = config.copy_and_resolve_references()
  other.model.text.num_layers = 2
  with pytest.raises(CheckpointMismatchError, match="model.text.num_layers: checkpoint has 1"):
    loop.train(other, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_siglip_trains_evaluates_and_its_checkpoint_refuses_the_softmax_loss(trained, tmp_path):
  """The sigmoid loss end to end on 8 devices (the ring): the bias trains and is logged, the in-loop
  evaluators and the checkpoint's restore handle the model with a bias. A workdir trained with one
  loss and resumed with the other is refused as another model, before any step, even with
  --allow_config_change, and left intact."""
  from jclip.runs.restore import restore_model

  config, softmax_workdir, _ = trained
  siglip = config.copy_and_resolve_references()
  siglip.loss, siglip.num_steps, siglip.optim.warmup_steps = "siglip", 2, 1
  workdir = str(tmp_path)
  state = loop.train(siglip, workdir)
  assert state.params["logit_bias"] != -10.0
  record = read_metrics(workdir)[-1]
  for key in ("loss", "logit_bias", "logit_scale", "i2t_accuracy", "val/rsum", "zeroshot/top1"):
    assert np.isfinite(record[key]), key
  restored = restore_model(workdir)
  np.testing.assert_array_equal(
    restored.variables["params"]["logit_bias"], state.params["logit_bias"]
  )

  runs = ((workdir, "siglip", "clip"), (softmax_workdir, "clip", "siglip"))
  for run_dir, stored, resumed in runs:
    before = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    other = (siglip if stored == "siglip" else config).copy_and_resolve_references()
    other.loss = resumed
    with pytest.raises(
      CheckpointMismatchError,
      match=f"different model.*\n  - loss: checkpoint has '{stored}', the config has '{resumed}'",
    ):
      loop.train(other, run_dir, allow_config_change=True)
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == before


def test_an_unreadable_latest_checkpoint_is_skipped_by_eval_and_set_aside_by_training(
  trained, tmp_path, capsys
):
  """A save cut short (truncated array files in step 6): evaluation and training both use step 4,
  saying why; training sets step 6 aside, trains it again and ends where the uninterrupted run
  did."""
  import glob
  import shutil

  from jclip.runs.restore import restore_model

  config, workdir, uninterrupted = trained
  copy = str(shutil.copytree(workdir, tmp_path / "run"))
  for path in glob.glob(f"{copy}/checkpoints/6/model/**/d/*", recursive=True):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  restored = restore_model(copy, "latest")
  assert restored.step == 4
  assert restored.checkpoint.reason.startswith(
    f"the newest readable step; {copy}/checkpoints/6 cannot be read (ValueError: "
  )

  resumed = loop.train(config, copy)
  assert (
    f"Resuming {copy} from step 4, the newest readable step; {copy}/checkpoints/6 cannot be read"
  ) in capsys.readouterr().out
  _assert_same_params(resumed, uninterrupted)
  assert os.path.isdir(f"{copy}/checkpoints/6.unreadable")
  assert Checkpoints(copy, create=False).latest_step() == 6
  assert [r["step"] for r in read_metrics(copy)] == [2, 4, 6]


def test_a_changed_config_is_refused_on_resume_unless_allowed(trained):
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.seed, other.batch_size = config.seed + 1, 32
  with pytest.raises(
    ConfigChangedError,
    match=r"with another config; resuming would continue it "
    r"with:\n  - batch_size: checkpoint has 16, the config has 32\n  - seed: ",
  ):
    loop.train(other, workdir)
  assert int(loop.train(other, workdir, allow_config_change=True).step) == 6  # already done


def test_sigterm_and_ctrl_c_save_the_step_and_exit_and_the_rerun_resumes_exactly(trained, tmp_path):
  """The README's preemption recipe: SIGTERM during step 3 (no checkpoint step: they are every 2),
  then Ctrl-C (SIGINT) during step 4 of the rerun; each run finishes its step, saves it, and exits
  with the shell's status for the signal and a message naming the workdir. The third run ends
  where the uninterrupted one did, and metrics.jsonl holds each step once. (The loop asks for the
  batch of index i at step i + 1 - DEVICE_PREFETCH, or at its first step.)"""
  config, _, uninterrupted = trained
  workdir = str(tmp_path / "run")
  command = ["--config=configs/tiny.py", f"--workdir={workdir}"]
  env = script_env(8)  # as `trained`
  term_at = f"TERM:{2 + inputs.DEVICE_PREFETCH}"
  for signal_at, status, stopped_after in ((term_at, 143, 3), ("INT:0", 130, 4)):
    result = subprocess.run(
      [sys.executable, "-c", SIGNALLED_TRAIN, signal_at, *command],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
      env=env,
    )
    assert result.returncode == status, result.stderr
    name = "SIGTERM" if status == 143 else "SIGINT"
    assert result.stderr.splitlines()[-1] == (
      f"stopped: Stopped by {name} after step {stopped_after}, whose checkpoint is saved in "
      f"{workdir}/checkpoints. To resume, run the same command again (--workdir={workdir})."
    )
    assert Checkpoints(workdir, create=False).latest_step() == stopped_after
    assert not [name for name in os.listdir(f"{workdir}/checkpoints") if "tmp" in name]
  result = _run("train.py", *command, xla_devices=8)
  assert result.returncode == 0, result.stderr
  assert f"Resuming {workdir} from step 4." in result.stdout
  assert [r["step"] for r in read_metrics(workdir)] == [2, 4, 6]
  _assert_same_params(restore_state(Checkpoints(workdir, create=False), config), uninterrupted)


def _run(script, *args, xla_devices=2):
  result = subprocess.run(
    [sys.executable, os.path.join(ROOT, script), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=script_env(xla_devices),
  )
  return result


def test_eval_writes_retrieval_json_and_answers_queries(trained, capsys):
  """eval.py itself for the retrieval report; the query through its work (report.py) in this
  process, the same code without a second Python start-up."""
  from jclip.evaluation.report import EvalRequest, evaluate_workdir

  _, workdir, _ = trained
  result = _run("eval.py", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr
  with open(os.path.join(workdir, "eval", "val_retrieval.json")) as f:
    metrics = json.load(f)
  # The figures recomputed from the embeddings of the checkpoint eval.py loads, by the protocol of
  # jclip/evaluation/retrieval.py written out: a caption's rank is the number of images scoring
  # above its own (ties: those of smaller index); an image's is its best caption's.
  from conftest import embedded_split
  from jclip.runs.restore import restore_model

  model = restore_model(workdir)
  assert f"Loaded step {model.step} of" in result.stdout
  embedded = embedded_split(model)
  image_emb, text_emb, text_to_image = (
    embedded.image_emb_ND,
    embedded.text_emb_MD,
    embedded.text_to_image_M,
  )
  # Queries against the gallery in float32, as eval.py scores them: identical captions (the
  # synthetic val split has some) tie exactly, and the tie rule decides.
  text_scores, image_scores = text_emb @ image_emb.T, image_emb @ text_emb.T

  def rank(row, correct):  # 0-based, ties broken by index
    return int(np.sum(row > row[correct]) + np.sum(row[:correct] == row[correct]))

  t2i = np.array([rank(text_scores[m], text_to_image[m]) for m in range(len(text_emb))])
  i2t = np.array(
    [
      min(rank(image_scores[n], m) for m in np.flatnonzero(text_to_image == n))
      for n in range(len(image_emb))
    ]
  )
  assert len(i2t) == model.config.data.num_val and len(t2i) > len(i2t)
  want = {}
  for name, ranks in (("i2t", i2t), ("t2i", t2i)):
    for k in (1, 5, 10):
      want[f"{name}_r{k}"] = np.mean(ranks < k)
    want[f"{name}_mean_rank"] = np.mean(ranks + 1)
    want[f"{name}_median_rank"] = np.median(ranks + 1)
  want["rsum"] = sum(want[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
  assert metrics == pytest.approx(want, abs=1e-9)
  assert 0 < want["rsum"] < 6  # neither all hits nor all misses: the figures are informative

  capsys.readouterr()
  evaluate_workdir(EvalRequest(workdir=workdir, query_text="a small red circle", top_k=3))
  out = capsys.readouterr().out
  assert out.count("score") == 3
  assert os.path.exists(os.path.join(workdir, "eval", "query_text_a_small_red_circle.png"))


def test_query_image_reads_a_file(trained, tmp_path, capsys):
  from PIL import Image

  from jclip.data.synthetic import CaptionedShapes
  from jclip.evaluation.report import EvalRequest, evaluate_workdir

  _, workdir, _ = trained
  path = str(tmp_path / "shape.png")
  Image.fromarray(CaptionedShapes("val", 5, image_size=40)[0]["image"]).convert("L").save(path)
  evaluate_workdir(EvalRequest(workdir=workdir, query_image=path))
  assert capsys.readouterr().out.count("score") == 5


@pytest.mark.parametrize(
  "request_fields, error, message",
  [
    (dict(query_image="corrupt.jpg"), ValueError, r"corrupt.jpg cannot be decoded"),
    (dict(query_image="missing.jpg"), FileNotFoundError, r"Image file not found: .*missing.jpg"),
    (dict(step="99"), FileNotFoundError, r"--step=99: .* has checkpoints of steps \[2, 4, 6\]"),
    (dict(split="test"), ValueError, r"splits 'train' and 'val', not 'test'"),
    (dict(data_root="elsewhere"), ValueError, r"--data_root applies to image-caption folders"),
    (dict(suite="probs_for_image=100"), ValueError, r"probs_for_image=100 is not an image"),
  ],
)
def test_eval_checks_its_inputs_before_restoring_or_embedding(
  trained, tmp_path, monkeypatch, request_fields, error, message
):
  """eval.py's work (jclip/evaluation/report.py) refuses a bad input before the weights are
  restored: a mistake costs seconds, not the split's embedding."""
  from jclip.evaluation import report
  from jclip.evaluation.suite import SuiteOptions

  _, workdir, _ = trained
  (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a JPEG")

  def must_not_run(*args, **kwargs):
    raise AssertionError("the model was restored before the inputs were checked")

  monkeypatch.setattr(report, "restore_model", must_not_run)
  monkeypatch.setattr(report.EvalSplit, "embed", must_not_run)
  fields = dict(request_fields)
  for name in ("query_image", "data_root"):
    if name in fields:
      fields[name] = str(tmp_path / fields[name])
  if "suite" in fields:
    fields["suite"] = SuiteOptions(probs_for_image=100)
  with pytest.raises(error, match=message):
    report.evaluate_workdir(report.EvalRequest(workdir=workdir, **fields))


def test_cli_errors_are_one_line_per_problem_without_traceback(tmp_path):
  """A user error is its message on stderr and nothing else: one line, or for a config with
  problems a heading and one line per problem; no traceback, no log lines."""
  result = _run("eval.py", f"--workdir={tmp_path}")
  assert result.returncode == 1
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: No checkpoints in "), result.stderr
  # The query image is checked first, before the workdir is even looked at.
  result = _run("eval.py", f"--workdir={tmp_path}", f"--query_image={tmp_path}/photo.jpg")
  assert result.returncode == 1
  assert result.stderr.splitlines() == [f"error: Image file not found: {tmp_path}/photo.jpg"]
  result = _run(
    "train.py", "--config=configs/quickstart.py", "--config.batch_size=3", f"--workdir={tmp_path}"
  )
  assert result.returncode == 1
  lines = result.stderr.splitlines()
  assert len(lines) == 2, result.stderr
  assert lines[0] == "error: The config cannot work:"
  assert lines[1].startswith("  - batch_size=3 does not split over 2 device(s)")


def test_nan_is_not_trained_through(tmp_path, monkeypatch):
  """Non-finite gradients are skipped and counted; when they persist the run stops with a message
  pointing at the last good checkpoint."""
  from conftest import tiny_clip_config

  config = tiny_clip_config()
  config.num_steps, config.optim.max_consecutive_nonfinite = 8, 3
  real_batches = inputs.config_train_batches

  def poisoned(*args, **kwargs):
    for step, batch in enumerate(real_batches(*args, **kwargs)):
      if step >= 2:  # steps 1-2 are fine (a checkpoint at 2), then every image is NaN
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch

  monkeypatch.setattr(inputs, "config_train_batches", poisoned)
  with pytest.raises(
    NonFiniteLossError,
    match=r"at step 4 \(2 updates skipped so far\).*last good checkpoint is step 2",
  ):
    loop.train(config, str(tmp_path))
  records = read_metrics(str(tmp_path))
  assert records[0]["skipped_updates"] == 0 and records[1]["skipped_updates"] == 2
