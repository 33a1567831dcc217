"""The evaluation suite on a tiny trained model: every file, sane numbers, prompts that change the
classifier, the parts skipped without labels, and eval.py --suite."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import run_eval
from jclip.data.sources import class_names_of, labels_of, make_source
from jclip.data.synthetic import KINDS
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.outputs import EvalOutputs
from jclip.evaluation.probes import knn_probe, linear_probe
from jclip.evaluation.suite import SuiteOptions, run_suite
from jclip.evaluation.zeroshot import DEFAULT_TEMPLATES, load_class_prompts, load_templates
from jclip.runs.restore import restore_model
from jclip.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_VAL = 60  # at least 9 images of every kind: enough for 3 to 9 probe folds


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny model trained for 6 steps (metrics logged at steps 2, 4, 6)."""
  from conftest import tiny_clip_config

  config = tiny_clip_config()
  config.data.num_val = NUM_VAL  # the tiny 24 leave one kind a single image: no folds possible
  workdir = str(tmp_path_factory.mktemp("suite"))
  loop.train(config, workdir)
  return workdir


class Unlabelled:
  """A split's images and captions without their classes (a folder with no category column)."""

  def __init__(self, source):
    self._source, self.split = source, source.split

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    return {k: v for k, v in self._source[index].items() if k != "label"}

  def captions(self, index):
    return self._source.captions(index)


@pytest.fixture(scope="module")
def evaluated(workdir):
  """(restored model, val source, its EvalSplit, the model's Predictor, the split embedded)."""
  restored = restore_model(workdir)
  source = make_source(restored.config.data, "val")
  split = EvalSplit(source, restored.config, restored.tokenizer, keep_views=False)
  predictor = Predictor(restored.model, restored.tokenizer, restored.config)
  return restored, source, split, predictor, split.embed(predictor, restored.variables, 32)


def _run_suite(evaluated, out_dir, workdir, split=None, **options):
  restored, _, own_split, predictor, _ = evaluated
  outputs = EvalOutputs(str(out_dir))
  run_suite(
    split or own_split,
    predictor,
    restored.variables,
    outputs,
    workdir,
    SuiteOptions(**options),
    batch_size=32,
  )
  return outputs.written


def _read(out_dir, name):
  with open(os.path.join(out_dir, name)) as f:
    return json.load(f)


def test_shapes_have_the_kinds_as_classes_and_a_list_has_none(evaluated):
  source = evaluated[1]
  assert class_names_of(source) == list(KINDS)
  labels = labels_of(source)
  assert labels.shape == (NUM_VAL,) and set(labels) == set(range(len(KINDS)))
  assert labels[3] == source[3]["label"]
  assert class_names_of([]) is None and labels_of([]) is None


def test_suite_writes_every_file_with_sane_numbers(evaluated, workdir, tmp_path, capsys):
  restored, source, _, predictor, embedded = evaluated
  image_emb, captions = embedded.image_emb_ND, embedded.captions
  written = _run_suite(evaluated, tmp_path, workdir, probs_for_image=3, probe_folds=3)
  names = [
    "val_zeroshot.json",
    "val_zeroshot_confusion.png",
    "val_zeroshot_image3.json",
    "val_similarity.json",
    "val_similarity.png",
    "val_probes.json",
    "val_projection.png",
    "val_projection.json",
    "training_curves.png",
    "training_curves.json",
  ]
  assert sorted(map(os.path.basename, written)) == sorted(names) == sorted(os.listdir(tmp_path))
  for name in names:
    if name.endswith(".png"):
      with Image.open(tmp_path / name) as image:
        assert image.format == "PNG" and min(image.size) > 100

  zero_shot = _read(tmp_path, "val_zeroshot.json")
  assert 0 <= zero_shot["top1_accuracy"] <= zero_shot["top5_accuracy"] == 1.0  # 5 classes
  for key in ("macro_precision", "macro_recall", "macro_f1"):
    assert 0 <= zero_shot[key] <= 1
  assert np.sum(zero_shot["confusion_matrix"]) == NUM_VAL
  assert [row["class"] for row in zero_shot["per_class"]] == list(KINDS)
  assert zero_shot["prompts"]["circle"] == [t.replace("{}", "circle") for t in DEFAULT_TEMPLATES]
  assert zero_shot["scale"] == pytest.approx(predictor.logit_scale(restored.variables))

  image = _read(tmp_path, "val_zeroshot_image3.json")
  assert list(image["probabilities"]) == list(KINDS)
  assert sum(image["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
  assert image["true_class"] == KINDS[source[3]["label"]]

  similarity = _read(tmp_path, "val_similarity.json")
  matrix = np.array(similarity["matrix"])
  assert matrix.shape == (8, 8) and np.all(np.abs(matrix) <= 1 + 1e-5)
  assert len(set(similarity["images"])) == 8 and similarity["images"][-1] == NUM_VAL - 1
  assert similarity["trace"] == pytest.approx(np.trace(matrix), abs=1e-5)
  assert similarity["captions"][0] == captions[0] == source.captions(0)[0]

  probes = _read(tmp_path, "val_probes.json")
  for modality in ("image", "text"):
    for probe in (probes[modality]["linear"], probes[modality]["knn"]):
      assert 0 <= probe["accuracy_mean"] <= 1 and 0 <= probe["macro_f1_mean"] <= 1
      assert len(probe["fold_accuracy"]) == 3
    assert probes[modality]["knn"]["num_neighbors"] == 5
  # The figures recomputed: the image probes on the images, the caption probes on the captions
  # labelled with their image's class, in folds grouped by image (an image's captions never
  # straddle folds). Ungrouped folds give other figures, so this fails without the grouping.
  text_emb, text_to_image = embedded.text_emb_MD, embedded.text_to_image_M
  assert len(text_to_image) > NUM_VAL  # several captions per image: grouping matters
  labels = labels_of(source)
  for modality, emb, probe_labels, groups in (
    ("image", image_emb, labels, None),
    ("text", text_emb, labels[text_to_image], text_to_image),
  ):
    linear = linear_probe(emb, probe_labels, 3, groups_N=groups)
    knn = {"num_neighbors": 5, **knn_probe(emb, probe_labels, 5, 3, groups_N=groups)}
    assert probes[modality] == {"linear": linear, "knn": knn}, modality
  ungrouped = [
    linear_probe(text_emb, labels[text_to_image], 3),
    knn_probe(text_emb, labels[text_to_image], 5, 3),
  ]
  assert [probes["text"]["linear"]["fold_accuracy"], probes["text"]["knn"]["fold_accuracy"]] != [
    u["fold_accuracy"] for u in ungrouped
  ]

  projection = _read(tmp_path, "val_projection.json")
  assert np.array(projection["points"]).shape == (NUM_VAL, 2)
  assert projection["labels"] == labels_of(source).tolist() and projection["method"] == "pca"

  curves = _read(tmp_path, "training_curves.json")
  assert [r["step"] for r in curves["records"]] == [2, 4, 6] and "loss" in curves["panels"]

  out = capsys.readouterr().out
  for text in (
    "val zero-shot (60 images, 5 classes, 40 prompts",
    "top-1",
    "circle",
    "Zero-shot probabilities of val image 3",
    "separation",
    "3-fold",
    "5-NN",
    "Saved in",
    "top-5 is 1 by construction with 5 classes",
    "text  linear",
  ):
    assert text in out, text


def test_templates_file_and_class_prompts_change_the_zero_shot_weights(
  evaluated, workdir, tmp_path
):
  templates_path, prompts_path = tmp_path / "templates.txt", tmp_path / "prompts.json"
  templates_path.write_text("a {} in the centre\n\nthere is a {} , small\n")
  prompts_path.write_text(json.dumps({"circle": ["a large red circle", "a round shape"]}))
  runs = {
    "default": {},
    "templates": {"templates": load_templates(str(templates_path))},
    "prompts": {"class_prompts": load_class_prompts(str(prompts_path))},
  }
  results = {}
  for name, options in runs.items():
    _run_suite(evaluated, tmp_path / name, workdir, probs_for_image=0, **options)
    results[name] = (
      _read(tmp_path / name, "val_zeroshot.json")["prompts"],
      list(_read(tmp_path / name, "val_zeroshot_image0.json")["probabilities"].values()),
    )

  assert results["templates"][0]["square"] == [
    "a square in the centre",
    "there is a square , small",
  ]
  assert results["prompts"][0]["circle"] == ["a large red circle", "a round shape"]
  assert results["prompts"][0]["square"] == results["default"][0]["square"]
  # Other class weights give other logits, so other probabilities for the same image.
  for name in ("templates", "prompts"):
    assert not np.allclose(results[name][1], results["default"][1], atol=1e-6), name


def test_without_labels_or_enough_images_per_fold_parts_are_skipped(evaluated, tmp_path, capsys):
  restored, source, _, _, _ = evaluated
  no_metrics = str(tmp_path)  # a workdir without metrics.jsonl
  unlabelled = EvalSplit(Unlabelled(source), restored.config, restored.tokenizer, keep_views=False)
  _run_suite(evaluated, tmp_path, no_metrics, split=unlabelled)
  assert sorted(os.listdir(tmp_path)) == ["val_similarity.json", "val_similarity.png"]
  out = capsys.readouterr().out
  assert "val has no class labels: zero-shot, probes and the projection are skipped" in out
  assert "Training curves skipped" in out

  _run_suite(evaluated, tmp_path / "folds", no_metrics, probe_folds=10)  # the rarest kind has 9
  assert "val_probes.json" not in os.listdir(tmp_path / "folds")
  assert "val probes skipped (probe_folds=10" in capsys.readouterr().out


def test_bad_options_are_named(evaluated, tmp_path):
  with pytest.raises(ValueError, match=r"probs_for_image=60 .* \[0, 60\)"):
    _run_suite(evaluated, tmp_path, str(tmp_path), probs_for_image=NUM_VAL)
  with pytest.raises(ValueError, match="'circel'"):
    _run_suite(evaluated, tmp_path, str(tmp_path), class_prompts={"circel": ["a circle"]})
  assert os.listdir(tmp_path) == []  # checked before anything is written


def test_eval_suite_command(workdir):
  result = run_eval(f"--workdir={workdir}", "--suite", "--probs_for_image=1")
  assert result.returncode == 0, result.stderr
  assert "val retrieval" in result.stdout and "val zero-shot" in result.stdout
  for name in (
    "val_retrieval.json",
    "val_zeroshot.json",
    "val_zeroshot_image1.json",
    "val_probes.json",
    "training_curves.png",
  ):
    assert os.path.exists(os.path.join(workdir, "eval", name)), name

  result = run_eval(f"--workdir={workdir}", "--probe_folds=3")
  assert result.returncode == 1 and "--probe_folds only apply to the suite: add --suite" in (
    result.stderr
  )
