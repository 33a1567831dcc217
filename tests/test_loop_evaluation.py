"""Evaluation inside the training loop: figures in metrics.jsonl and TensorBoard alike, the best
checkpoint kept beside the latest ones, and eval.py --step choosing between them."""

import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_eval
from jclip.config.defaults import evaluator
from jclip.evaluation import evaluators
from jclip.runs.checkpoint import Checkpoints
from jclip.runs.metrics import TENSORBOARD_DIR, read_metrics
from jclip.runs.restore import restore_model
from jclip.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the scripted evaluator reports at its 1st, 2nd, ... run: the best is its 2nd run.
SCORES = (0.5, 0.9, 0.7, 0.8)


class ScriptedEvaluator:
  """Reports SCORES in turn, so that the best step is known and is not the last one."""

  figure_names = ("score",)
  tasks = ("clip",)
  runs = 0

  def __init__(self, split, predictor, batch_size, where):
    del split, predictor, batch_size, where

  def __call__(self, variables):
    del variables
    ScriptedEvaluator.runs += 1
    return {"score": SCORES[ScriptedEvaluator.runs - 1]}

  def figures(self, result):
    return result


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory):
  """A tiny run of 6 steps, scored at steps 2, 4 and 6 (0.5, 0.9, 0.7): (config, workdir)."""
  from conftest import tiny_clip_config

  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(evaluators.EVALUATORS, "scripted", ScriptedEvaluator)
    config = tiny_clip_config()
    config.evals.scripted = evaluator("scripted", every=2)
    config.best_metric = "scripted/score"
    workdir = str(tmp_path_factory.mktemp("scripted"))
    ScriptedEvaluator.runs = 0
    loop.train(config, workdir)
  return config, workdir


def test_eval_figures_are_logged_with_their_prefix(scripted_run):
  _, workdir = scripted_run
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [2, 4, 6]  # one record per step: training and eval
  assert [r["scripted/score"] for r in records] == list(SCORES[:3])
  for record in records:
    for key in (
      "loss",
      "val/i2t_r1",
      "val/i2t_r10",
      "val/t2i_r5",
      "val/rsum",
      "zeroshot/top1",
      "zeroshot/macro_f1",
    ):
      assert np.isfinite(record[key]), key
    assert record["val/rsum"] == pytest.approx(
      sum(record[f"val/{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    )


def test_tensorboard_holds_the_same_values_as_metrics_jsonl(scripted_run):
  _, workdir = scripted_run
  events = EventAccumulator(os.path.join(workdir, TENSORBOARD_DIR))
  events.Reload()
  records = read_metrics(workdir)
  names = {key for record in records for key in record if key != "step"}
  assert set(events.Tags()["scalars"]) == names
  for name in names:
    logged = {r["step"]: r[name] for r in records if name in r}
    written = {event.step: event.value for event in events.Scalars(name)}
    assert written.keys() == logged.keys(), name
    for step, value in logged.items():  # TensorBoard stores float32
      assert written[step] == pytest.approx(value, rel=1e-6, abs=1e-30), (name, step)


def test_best_checkpoint_is_the_step_with_the_highest_best_metric(scripted_run):
  _, workdir = scripted_run
  records = read_metrics(workdir)
  best_step = max(records, key=lambda r: r["scripted/score"])["step"]
  assert best_step == 4
  checkpoints = Checkpoints(workdir, create=False)
  assert checkpoints.best_step() == 4 and checkpoints.latest_step() == 6
  assert checkpoints.best_record() == {"metric": "scripted/score", "value": 0.9, "step": 4}
  best = restore_model(workdir)  # the default: the best
  assert best.step == 4 and "the best by scripted/score = 0.9000" in best.checkpoint.reason
  # It holds the weights of step 4, which the latest checkpoints kept too (keep_checkpoints=5).
  same_step = restore_model(workdir, "4")
  assert same_step.checkpoint.folder == "checkpoints"
  _assert_same_variables(best.variables, same_step.variables)
  assert restore_model(workdir, "latest").step == 6


def _assert_same_variables(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_resumed_run_remembers_the_best_value(scripted_run, tmp_path):
  """Two more steps score 0.8: below the 0.9 of step 4, so the best stays; a run that forgot the
  best value would keep step 8."""
  config, workdir = scripted_run
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(evaluators.EVALUATORS, "scripted", ScriptedEvaluator)
    config = config.copy_and_resolve_references()
    config.num_steps = 8
    ScriptedEvaluator.runs = 3
    loop.train(config, copy)
  assert read_metrics(copy)[-1]["scripted/score"] == SCORES[3]
  assert Checkpoints(copy, create=False).best_step() == 4


def test_eval_step_flag_loads_best_latest_or_a_number_and_says_why(scripted_run, capsys):
  """eval.py itself once (the flag reaches the report); the other choices through its work,
  jclip.evaluation.report, in this process: the same code without a Python start-up each."""
  from jclip.evaluation.report import EvalRequest, evaluate_workdir

  _, workdir = scripted_run
  result = run_eval(f"--workdir={workdir}", "--step=latest")
  assert result.returncode == 0 and "Loaded step 6 of" in result.stdout, result.stderr
  evaluate_workdir(EvalRequest(workdir=workdir))
  out = capsys.readouterr().out
  assert "Loaded step 4 of" in out and "the best by scripted/score = 0.9000 (latest: step 6)" in out
  evaluate_workdir(EvalRequest(workdir=workdir, step="2"))
  assert "Loaded step 2 of" in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match=r"--step=3:.*\[2, 4, 6\]"):
    evaluate_workdir(EvalRequest(workdir=workdir, step="3"))


def test_step_best_without_a_best_checkpoint_is_a_clear_error(tmp_path):
  from conftest import tiny_clip_config

  config = tiny_clip_config()
  config.num_steps, config.optim.warmup_steps, config.best_metric = 2, 1, None
  config.evals = ml_collections.ConfigDict()
  loop.train(config, str(tmp_path))
  assert Checkpoints(str(tmp_path), create=False).best_step() is None
  assert restore_model(str(tmp_path)).step == 2  # the default falls back to the latest
  from jclip.evaluation.report import EvalRequest, evaluate_workdir

  with pytest.raises(FileNotFoundError, match="--step=best: .*no best checkpoint"):
    evaluate_workdir(EvalRequest(workdir=str(tmp_path), step="best"))
