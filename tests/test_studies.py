"""eval.py's studies on tiny trained workdirs: the comparison's rows are the evaluators' own
figures, the prompt study's k = 0 and the template sets are plain zero-shot on the scored split,
and the flags are checked before anything is loaded."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_eval
from jclip.data.sources import make_source
from jclip.errors import UserError
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.evaluators import RetrievalEvaluator, ZeroShotEvaluator
from jclip.evaluation.similarity import separation_score, similarity_matrix
from jclip.evaluation.studies import StudyRequest, run_studies
from jclip.runs.restore import restore_model
from jclip.training import loop

STUDY = os.path.join(ROOT, "docs", "prompt_study_shapes.json")
TEMPLATE_SETS = os.path.join(ROOT, "docs", "template_sets_shapes.json")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """Two tiny CLIPs trained for 6 steps from different seeds."""
  from conftest import tiny_clip_config

  paths = []
  for seed in (0, 1):
    config = tiny_clip_config()
    config.seed = seed
    paths.append(str(tmp_path_factory.mktemp(f"seed{seed}")))
    loop.train(config, paths[-1])
  return paths


def _evaluated(workdir, split="val"):
  """(restored model, its predictor, an EvalSplit of `split`), as a test builds them itself."""
  restored = restore_model(workdir)
  predictor = Predictor(restored.model, restored.tokenizer, restored.config)
  source = make_source(restored.config.data, split)
  return restored, predictor, EvalSplit(source, restored.config, restored.tokenizer, False)


def _read(workdir, name):
  with open(os.path.join(workdir, "eval", name)) as f:
    return json.load(f)


def test_the_comparison_rows_are_each_evaluator_s_own_figures(workdirs, capsys):
  first, second = workdirs
  run_studies(StudyRequest(workdir=first, compare_workdirs=(second, first), batch_size=8))
  rows = _read(first, "val_compare_workdirs.json")["rows"]
  assert [row["workdir"] for row in rows] == [first, second]  # --workdir first, once
  for row in rows:
    restored, predictor, split = _evaluated(row["workdir"])
    variables = restored.variables
    retrieval = RetrievalEvaluator(split, predictor, 8)
    assert {k: row[k] for k in retrieval.figure_names} == pytest.approx(
      retrieval.figures(retrieval(variables))
    )
    zero_shot = ZeroShotEvaluator(split, predictor, 8)(variables)
    assert row["zeroshot_top1"] == zero_shot["top1_accuracy"]
    # Every image with its first caption, embedded here one caption at a time.
    source = split.source
    captions = [source.captions(i)[0] for i in range(len(source))]
    sim_NN = similarity_matrix(
      split.embed(predictor, variables).image_emb_ND, predictor.texts(variables, captions)
    )
    assert row["separation"] == pytest.approx(separation_score(sim_NN), abs=1e-6)
    assert row["step"] == restored.step and row["num_images"] == len(source)
  assert rows[0]["rsum"] != rows[1]["rsum"]
  out = capsys.readouterr().out
  assert "Workdirs on their val split" in out and f"{second}  " in out
  with Image.open(os.path.join(first, "eval", "val_compare_workdirs.png")) as image:
    assert image.format == "PNG"


def test_the_studies_refuse_a_selection_on_the_scored_split(workdirs):
  with pytest.raises(UserError, match="--selection_split=val is --split itself"):
    StudyRequest(workdir=workdirs[0], selection_split="val", split="val")


def test_eval_prompt_study_and_template_sets_command(workdirs):
  workdir = workdirs[1]
  args = [f"--workdir={workdir}", f"--prompt_study={STUDY}", "--max_attributes=2"]
  result = run_eval(*args, f"--template_sets={TEMPLATE_SETS}", "--selection_split=train")
  assert result.returncode == 0, result.stderr
  for text in ("Prompt study (", "Chosen words", "Template sets", "chosen on     train (64"):
    assert text in result.stdout, text
  study, sets = _read(workdir, "val_prompt_study.json"), _read(workdir, "val_template_sets.json")
  for name in ("val_prompt_study.png", "val_template_sets.png"):
    with Image.open(os.path.join(workdir, "eval", name)) as image:
      assert image.format == "PNG"
  assert [row["k"] for row in study["arms"]["control"]] == [0, 1, 2]
  # The scored images are the whole val split: k = 0 and every template set are the zero-shot
  # evaluator's figures with those templates.
  restored, predictor, split = _evaluated(workdir)
  plain = ZeroShotEvaluator(split, predictor, 8, templates=[study["base_template"]])
  k0 = study["arms"]["attributes"][0]
  assert k0["evaluation_top1"] == plain(restored.variables)["top1_accuracy"]
  assert study["evaluation"]["num_images"] == len(split.source)
  for row in sets["sets"]:
    by_evaluator = ZeroShotEvaluator(split, predictor, 8, templates=row["templates"])
    recalls = {r["class"]: r["recall"] for r in by_evaluator(restored.variables)["per_class"]}
    assert row["evaluation_top1"] == by_evaluator(restored.variables)["top1_accuracy"]
    assert row["evaluation_per_class"] == {
      name: value if np.sum(split.labels_N == split.class_names.index(name)) else None
      for name, value in recalls.items()
    }

  result = run_eval(
    f"--workdir={workdir}", f"--template_sets={TEMPLATE_SETS}", "--max_attributes=2"
  )
  assert result.returncode == 1
  assert "error: --max_attributes only applies to --prompt_study." in result.stderr
