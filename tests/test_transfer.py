"""The course path in miniature: two classifiers, then CLIP built from their backbones."""

import flax
import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from conftest import tiny_clip_config
from jclip.config.defaults import evaluator
from jclip.runs.checkpoint import Checkpoints
from jclip.runs.restore import restore_model
from jclip.training import loop
from jclip.training.state import init_state
from jclip.training.transfer import TransferError, init_from_classifiers


def _classifier_config(task):
  config = tiny_clip_config()
  config.task = task
  config.model.num_classes = 5  # the synthetic shapes' kinds
  config.num_steps = 2
  config.optim.warmup_steps = 1
  config.evals = ml_collections.ConfigDict(dict(val=evaluator("classification", batch_size=8)))
  config.best_metric = "val/top1"
  return config


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
  workdirs = {}
  for task in ("image_classifier", "text_classifier"):
    workdirs[task] = str(tmp_path_factory.mktemp(task))
    state = loop.train(_classifier_config(task), workdirs[task])
    assert set(state.params) == {"encoder", "head"}
  return workdirs


def _flat(tree):
  return traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(tree)), sep="/")


def test_classifiers_log_accuracy(classifiers):
  from jclip.runs.metrics import read_metrics

  record = read_metrics(classifiers["text_classifier"])[-1]
  assert 0.0 <= record["accuracy"] <= 1.0 and np.isfinite(record["loss"])
  assert "temperature" not in record


def test_clip_starts_from_both_backbones_and_keeps_the_text_tokenizer(classifiers, tmp_path):
  config = tiny_clip_config()
  config.num_steps, config.optim.warmup_steps = 1, 0
  config.init.update(
    image_classifier_workdir=classifiers["image_classifier"],
    text_classifier_workdir=classifiers["text_classifier"],
  )
  _, fresh = init_state(config)
  started = init_from_classifiers(fresh, config.init)
  for task, tower in (("image_classifier", "image_encoder"), ("text_classifier", "text_encoder")):
    encoder = _flat(restore_model(classifiers[task]).variables["params"]["encoder"])
    grafted = _flat(started.params[tower])
    assert set(grafted) - set(encoder) == {"proj/kernel", "proj/bias"}  # the new projection
    for key, value in encoder.items():
      np.testing.assert_array_equal(grafted[key], value)
    np.testing.assert_array_equal(grafted["proj/kernel"], _flat(fresh.params[tower])["proj/kernel"])

  loop.train(config, str(tmp_path))  # the same, through the loop
  assert (
    Checkpoints(str(tmp_path), create=False).tokenizer_bytes()
    == Checkpoints(classifiers["text_classifier"], create=False).tokenizer_bytes()
  )


def test_mismatched_backbone_is_a_clear_error(classifiers):
  config = tiny_clip_config()
  config.model.image.widths = (8, 24)
  config.init.image_classifier_workdir = classifiers["image_classifier"]
  _, fresh = init_state(config)
  with pytest.raises(
    TransferError,
    match=r"stage2_block1/conv1/kernel: \(3, 3, 8, 16\) in the "
    r"image_classifier .*\(3, 3, 8, 24\) here",
  ):
    init_from_classifiers(fresh, config.init)


def test_wrong_kind_of_checkpoint_is_refused(classifiers):
  config = tiny_clip_config()
  config.init.image_classifier_workdir = classifiers["text_classifier"]
  _, fresh = init_state(config)
  with pytest.raises(
    TransferError, match="holds a 'text_classifier' model, not an 'image_classifier'"
  ):
    init_from_classifiers(fresh, config.init)


def test_classifier_needs_matching_class_count(tmp_path):
  config = _classifier_config("image_classifier")
  config.model.num_classes = 4
  with pytest.raises(ValueError, match="has 5 classes .* set --config.model.num_classes=5"):
    loop.train(config, str(tmp_path))


@pytest.mark.parametrize("task, count", [("image_classifier", 24), ("text_classifier", 120)])
def test_classifier_evaluation_writes_metrics_and_confusion_matrix(
  classifiers, task, count, tmp_path
):
  import json

  from jclip.data.sources import make_source
  from jclip.evaluation.embedding import EvalSplit, Predictor
  from jclip.evaluation.evaluators import ClassificationEvaluator
  from jclip.evaluation.outputs import EvalOutputs

  restored = restore_model(classifiers[task])
  source = make_source(restored.config.data, "val")  # 24 images with 5 captions each
  split = EvalSplit(source, restored.config, restored.tokenizer, keep_views=False)
  evaluator = ClassificationEvaluator(
    split, Predictor(restored.model, restored.tokenizer, restored.config), 8
  )
  metrics = evaluator(restored.variables)
  evaluator.report(metrics, EvalOutputs(str(tmp_path)))
  assert np.sum(metrics["confusion_matrix"]) == count
  assert 0.0 <= metrics["macro_f1"] <= 1.0
  with open(tmp_path / "val_classification.json") as f:
    assert json.load(f)["task"] == task
  assert (tmp_path / "val_confusion.png").stat().st_size > 1000


def test_classifier_on_a_folder_without_categories_stops_before_training(tmp_path):
  from test_folder import _make_folder

  rows = [
    "a.jpg\t0\ta red photo\ttrain",
    "b.jpg\t0\ta grey ball\ttrain",
    "c.png\t0\ta blue dog\tval",
    "d.jpg\t0\tdark\ttest",
  ]
  config = _classifier_config("text_classifier")
  config.data.name = "folder"
  config.data.root = _make_folder(
    tmp_path / "data", rows=rows, header="image\tcaption_idx\tcaption\tsplit\n"
  )
  config.data.tfds_dir = str(tmp_path / "tfds")
  with pytest.raises(ValueError, match="needs class labels.*a 'category' column in captions.tsv"):
    loop.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # nothing is written before the inputs are checked
