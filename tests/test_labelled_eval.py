"""A tiny CLIP trained on a generated folder whose captions are a CSV with its own column names,
then evaluated on generated banks of labelled images: its figures equal jclip.load's embeddings
with sklearn on the same split, every PNG has its JSON, the images it trained on are counted,
and eval.py --labelled_images runs end to end."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_labelled import COLOURS, image_bytes, table, write

import jclip
from conftest import run_eval
from jclip.data.labelled import read_labelled_images
from jclip.data.sources import make_source
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.labelled import (
  KNN,
  LOGISTIC,
  ZERO_SHOT,
  LabelledImagesEvaluator,
  LabelledOptions,
  stratified_split,
)
from jclip.evaluation.outputs import EvalOutputs
from jclip.evaluation.report import EvalRequest, evaluate_workdir
from jclip.evaluation.seen_in_training import find_seen_in_training
from jclip.runs.restore import restore_model
from jclip.training import loop

# The training images the bank holds copies of (one PNG: its stored bytes are a re-encoding).
SEEN = ("red_train0.jpg", "green_train1.jpg", "blue_train0.png")
# One neighbour: a k-NN that saw the held-out images would be right on every one of them.
OPTIONS = LabelledOptions(probe_folds=3, probe_neighbors=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, data folder, bank folder): a tiny CLIP trained for 2 steps on data/images/ with
  data/pairs.csv (columns file, text, part, kind; no caption index), and a bank of class folders
  holding 6 new images of each colour (two of them mislabelled) and copies of the SEEN training
  images."""
  from conftest import tiny_clip_config

  top = tmp_path_factory.mktemp("labelled")
  rows = []
  for c, (name, colour) in enumerate(COLOURS.items()):
    for part, count in (("train", 6), ("val", 2)):
      for i in range(count):
        file = f"{name}_{part}{i}.png"
        file = file if file in SEEN else file.replace(".png", ".jpg")
        fmt = "PNG" if file.endswith(".png") else "JPEG"
        seed = 1000 + 100 * c + 10 * (part == "val") + i  # every image its own content
        write(top / "data" / "images" / file, image_bytes(colour, seed, fmt))
        # Two captions, the rows' order not the alphabetical one.
        rows += [[file, f"the {name} picture, number {i}", part, name], [file, name, part, name]]
  table(top / "data" / "pairs.csv", ["file", "text", "part", "kind"], rows)
  bank = str(top / "bank")
  for c, name in enumerate(COLOURS):
    for i in range(6):
      # Two of each class's six look like the next class: no method is right on every image.
      look = list(COLOURS.values())[(c + (i >= 4)) % len(COLOURS)]
      write(top / "bank" / name / f"{name}{i}.jpg", image_bytes(look, 500 + 10 * c + i))
  for file in SEEN:
    shutil.copy(top / "data" / "images" / file, top / "bank" / file.split("_")[0] / file)

  config = tiny_clip_config()
  config.data.update(
    name="folder",
    root=str(top / "data"),
    tfds_dir=str(top / "tfds"),
    captions_file="pairs.csv",
    image_column="file",
    caption_column="text",
    split_column="part",
    label_column="kind",
  )
  # Two steps, no evaluation in the loop: what is tested is reading the CSV and the model after.
  config.num_steps, config.checkpoint_every, config.optim.warmup_steps = 2, 2, 1
  config.evals, config.best_metric = {}, None
  workdir = str(top / "run")
  loop.train(config, workdir)
  return workdir, str(top / "data"), bank


@pytest.fixture(scope="module")
def evaluated(trained):
  """(bank, its evaluator, the result of the trained weights)."""
  workdir, _, bank_root = trained
  restored = restore_model(workdir)
  bank = read_labelled_images(bank_root)
  seen = find_seen_in_training(bank, restored.config.data)
  predictor = Predictor(restored.model, restored.tokenizer, restored.config)
  split = EvalSplit(bank, restored.config, restored.tokenizer, keep_views=False)
  evaluator = LabelledImagesEvaluator(split, predictor, 8, OPTIONS, seen)
  return bank, evaluator, evaluator(restored.variables)


def test_a_run_trains_on_a_csv_with_its_own_column_names(trained):
  workdir, data, _ = trained
  config = restore_model(workdir).config  # the stored config names the columns
  assert (config.data.captions_file, config.data.caption_column) == ("pairs.csv", "text")
  train = make_source(config.data, "train")
  assert len(train) == 18 and train.class_names == ["blue", "green", "red"]
  with open(os.path.join(data, "pairs.csv")) as f:
    expected = {}
    for row in csv.DictReader(f):
      if row["part"] == "train":
        expected.setdefault(row["kind"], set()).add(row["text"])
  found = {}
  for i in range(len(train)):
    found.setdefault(train.class_names[train[i]["label"]], set()).update(train.captions(i))
  assert found == expected
  assert train.captions(0)[1] == train.class_names[train[0]["label"]]  # in the rows' order


def test_figures_equal_jclip_load_embeddings_with_sklearn_on_the_same_split(trained, evaluated):
  bank, _, result = evaluated
  model = jclip.load(trained[0])
  emb_ND = model.encode_images(bank.paths)
  np.testing.assert_allclose(emb_ND, result["image_emb_ND"], atol=1e-5)
  labels_N = bank.labels()
  train, test = stratified_split(labels_N, OPTIONS.test_fraction, OPTIONS.split_seed)
  assert result["split"]["held_out"] == test.tolist()
  direct = {
    ZERO_SHOT: np.argmax(model.zero_shot(bank.paths, bank.class_names), axis=1)[test],
    KNN: KNeighborsClassifier(1, metric="cosine").fit(emb_ND[train], labels_N[train]),
    LOGISTIC: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
      emb_ND[train], labels_N[train]
    ),
  }
  for method, predicted in direct.items():
    if method != ZERO_SHOT:
      predicted = predicted.predict(emb_ND[test])
    scores = result["held_out"][method]
    assert scores["top1_accuracy"] == pytest.approx(np.mean(predicted == labels_N[test])), method
    macro_f1 = f1_score(
      labels_N[test], predicted, labels=np.unique(labels_N[test]), average="macro"
    )
    assert scores["macro_f1"] == pytest.approx(macro_f1), method
    assert np.sum(scores["confusion_matrix"]) == len(test)
  assert result["held_out"][KNN]["top1_accuracy"] < 1  # the mislabelled images are not guessed


def test_report_writes_a_json_beside_every_png_and_counts_the_images_seen_in_training(
  evaluated, tmp_path, capsys
):
  bank, evaluator, result = evaluated
  outputs = EvalOutputs(str(tmp_path))
  evaluator.report(result, outputs)
  out = capsys.readouterr().out
  pngs = [path for path in outputs.written if path.endswith(".png")]
  assert len(pngs) == 4  # three confusion matrices and the PCA map (umap-learn is not installed)
  for png in pngs:
    assert os.path.exists(png[: -len(".png")] + ".json"), png
  assert "warning: 3 of the 21 bank images were seen in training" in out
  assert "method               accuracy  macro P  macro R  macro F1" in out
  for line in ("zero-shot  ", "1-NN  ", "logistic regression  "):
    assert f"\n{line}" in out
  with open(tmp_path / "bank_labelled.json") as f:
    saved = json.load(f)
  seen_files = sorted(
    os.path.basename(saved["images"][i]) for i in saved["seen_in_training"]["seen"]
  )
  assert seen_files == sorted(SEEN)
  assert saved["held_out"]["k-NN"]["top1_accuracy"] == result["held_out"][KNN]["top1_accuracy"]
  with open(tmp_path / "bank_predictions.csv") as f:
    rows = list(csv.DictReader(f))
  assert [row["image"] for row in rows] == bank.paths
  assert sum(row["part"] == "held out" for row in rows) == len(result["split"]["held_out"])


def test_eval_py_on_a_table_with_metadata_a_broken_file_and_a_single_image_class(trained, tmp_path):
  workdir, _, bank_root = trained
  bank = read_labelled_images(bank_root)
  rows = [
    [os.path.relpath(path, tmp_path), bank.class_names[label], f"{i % 7}"]
    for i, (path, label) in enumerate(zip(bank.paths, bank.labels(), strict=True))
  ]
  write(tmp_path / "broken.jpg", b"not a picture")
  write(tmp_path / "grey.jpg", image_bytes((128, 128, 128), 5))
  rows += [["broken.jpg", "red", "3"], ["grey.jpg", "grey", "1"]]
  stimuli = table(tmp_path / "stimuli.csv", ["file", "category", "valence"], rows)
  templates = tmp_path / "templates.txt"
  templates.write_text("a {} thing\na photo of {}\n")
  result = run_eval(
    f"--workdir={workdir}",
    f"--labelled_images={stimuli}",
    "--image_column=file",
    "--label_column=category",
    f"--templates={templates}",
    "--test_fraction=0.5",
    "--split_seed=3",
    "--probe_folds=3",
    "--probe_neighbors=2",
    devices=1,
  )
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "warning: 1 file(s) of stimuli left out" in out and "broken.jpg" in out
  assert "warning: 1 class(es) have a single image, ['grey']" in out
  assert "warning: 3 of the 22 stimuli images were seen in training" in out
  assert "22 images in 4 classes; 9 train the classifiers, 12 are held out" in out
  assert "Cross-validation, 3 stratified folds over 21 of the 22 images" in out
  eval_dir = os.path.join(workdir, "eval")
  with open(os.path.join(eval_dir, "stimuli_labelled.json")) as f:
    saved = json.load(f)
  assert saved["zero_shot_prompts"]["grey"] == ["a grey thing", "a photo of grey"]
  assert saved["split"]["seed"] == 3 and saved["left_out"][0]["file"].endswith("broken.jpg")
  with open(os.path.join(eval_dir, "stimuli_predictions.csv")) as f:
    rows = list(csv.DictReader(f))
  assert rows[0].keys() >= {"image", "class", "part", "k-NN", "valence"}
  assert [row["part"] for row in rows if row["class"] == "grey"] == ["left out"]


def test_eval_of_another_folder_counts_the_images_of_the_training_split(trained, capsys):
  workdir, data, _ = trained
  other = os.path.join(os.path.dirname(data), "other")
  os.makedirs(os.path.join(other, "images"))
  # Two training images (one under another name) and a val image: two were seen in training.
  copies = {"red_train0.jpg": "a.jpg", "green_train1.jpg": "b.jpg", "red_val0.jpg": "c.jpg"}
  for file, copy in copies.items():
    shutil.copy(os.path.join(data, "images", file), os.path.join(other, "images", copy))
  rows = [[copy, f"caption {i}", "val", "red"] for i, copy in enumerate(copies.values())]
  table(os.path.join(other, "pairs.csv"), ["file", "text", "part", "kind"], rows)
  evaluate_workdir(EvalRequest(workdir=workdir, data_root=other, batch_size=8))
  assert "warning: 2 of the 3 val images were seen in training" in capsys.readouterr().out
  with open(os.path.join(workdir, "eval", "val_seen_in_training.json")) as f:
    assert json.load(f)["num_seen"] == 2

  evaluate_workdir(EvalRequest(workdir=workdir, batch_size=8))  # its own val split: none seen
  assert "seen in training" not in capsys.readouterr().out
  with open(os.path.join(workdir, "eval", "val_seen_in_training.json")) as f:
    assert json.load(f)["num_seen"] == 0
