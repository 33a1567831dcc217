"""eval.py's queries: hits named and saved as JSON, a split embedded once per checkpoint, an image
query that embeds captions only, zero-shot among typed labels, and classifiers' queries."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import jclip
from conftest import tiny_clip_config
from jclip.data.sources import image_name, make_source
from jclip.data.synthetic import KINDS
from jclip.errors import UserError
from jclip.evaluation import report
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.report import EvalRequest, evaluate_workdir
from jclip.training import loop


@pytest.fixture
def photo(tmp_path) -> str:
  """A val image of the shapes, saved as a 40 px greyscale PNG (not the model's size or mode)."""
  source = make_source(tiny_clip_config().data, "val")
  path = str(tmp_path / "shape.png")
  Image.fromarray(source[0]["image"]).resize((40, 40)).convert("L").save(path)
  return path


def _read(workdir, name):
  with open(os.path.join(workdir, "eval", name)) as f:
    return json.load(f)


def test_a_text_query_names_its_hits_and_saves_them(workdir_copy, capsys):
  evaluate_workdir(EvalRequest(workdir=workdir_copy, query_text="a small red circle", top_k=3))
  out = capsys.readouterr().out
  saved = _read(workdir_copy, "query_text_a_small_red_circle.json")
  assert saved["query"] == "a small red circle" and saved["split"] == "val"
  model = jclip.load(workdir_copy)
  source = make_source(model.config.data, "val")
  images = [source[i]["image"] for i in range(len(source))]
  scores_N = model.encode_images(images) @ model.encode_texts("a small red circle")[0]
  indices = np.argsort(-scores_N, kind="stable")[:3]  # ties by image order, as the report says
  scores = scores_N[indices]
  assert [hit["index"] for hit in saved["hits"]] == list(indices)
  np.testing.assert_allclose([hit["score"] for hit in saved["hits"]], scores, atol=1e-5)
  for hit in saved["hits"]:
    assert hit["image"] == image_name(source, hit["index"]) == f"val image {hit['index']}"
    assert f"{hit['rank']}. {hit['image']}  score " in out
  assert os.path.exists(os.path.join(workdir_copy, "eval", "query_text_a_small_red_circle.png"))


def test_a_second_query_reads_the_split_s_embeddings_back(workdir_copy, monkeypatch):
  evaluate_workdir(EvalRequest(workdir=workdir_copy, query_text="a red circle"))

  def must_not_run(*args, **kwargs):
    raise AssertionError("the split's images were embedded again")

  monkeypatch.setattr(Predictor, "image_batch", must_not_run)
  evaluate_workdir(EvalRequest(workdir=workdir_copy, query_text="a blue square"))
  # Another checkpoint's weights are another model: its embeddings are computed, not read.
  with pytest.raises(AssertionError, match="embedded again"):
    evaluate_workdir(EvalRequest(workdir=workdir_copy, query_text="a blue square", step="latest"))


def test_an_image_query_embeds_the_captions_only(workdir_copy, photo, monkeypatch, capsys):
  def must_not_run(*args, **kwargs):
    raise AssertionError("an image query embedded the split's images")

  monkeypatch.setattr(EvalSplit, "image_embeddings", must_not_run)
  evaluate_workdir(EvalRequest(workdir=workdir_copy, query_image=photo, top_k=4))
  saved = _read(workdir_copy, "query_image_shape_png.json")
  assert len(saved["hits"]) == 4 and saved["query_image"] == photo
  assert capsys.readouterr().out.count("score") == 4
  scores = [hit["score"] for hit in saved["hits"]]
  assert scores == sorted(scores, reverse=True)


def test_labels_classify_the_query_image_zero_shot_without_a_split(
  workdir_copy, photo, monkeypatch, capsys
):
  expected_C = jclip.load(workdir_copy).zero_shot(photo, ["circle", "square", "cross"])[0]
  monkeypatch.setattr(report, "make_source", lambda *args: pytest.fail("a split was read"))
  evaluate_workdir(
    EvalRequest(workdir=workdir_copy, query_image=photo, labels=["circle", "square", "cross"])
  )
  saved = _read(workdir_copy, "query_image_shape_png_classes.json")["probabilities"]
  np.testing.assert_allclose([saved[c] for c in ("circle", "square", "cross")], expected_C, 1e-5)
  assert "Zero-shot probabilities of" in capsys.readouterr().out


@pytest.mark.parametrize(
  "fields, message",
  [
    (dict(labels=["circle", "square"]), "--labels classifies the --query_image"),
    (dict(labels=["circle"], query_image="x.png"), "give two or more non-empty labels"),
  ],
)
def test_labels_need_an_image_and_two_labels(fields, message):
  with pytest.raises(UserError, match=message):
    EvalRequest(workdir="unused", **fields)


def test_an_image_classifier_classifies_a_query_image(tmp_path_factory, photo, capsys):
  config = tiny_clip_config()
  config.task, config.model.num_classes = "image_classifier", len(KINDS)
  config.num_steps, config.optim.warmup_steps = 2, 1
  config.evals.val.type, config.best_metric = "classification", "val/top1"
  del config.evals["zeroshot"]
  workdir = str(tmp_path_factory.mktemp("image_classifier"))
  loop.train(config, workdir)
  evaluate_workdir(EvalRequest(workdir=workdir, query_image=photo))
  saved = _read(workdir, "query_image_shape_png_classes.json")["probabilities"]
  assert list(saved) == list(KINDS)
  np.testing.assert_allclose(
    [saved[c] for c in KINDS], jclip.load(workdir).classify(photo)[0], atol=1e-5
  )
  assert "image_classifier probabilities of" in capsys.readouterr().out
  with pytest.raises(UserError, match="it classifies a --query_image, not a --query_text"):
    evaluate_workdir(EvalRequest(workdir=workdir, query_text="a red circle"))


def test_a_querybank_adds_normalised_figures_beside_the_plain_ones(workdir_copy, capsys):
  from conftest import embedded_split
  from jclip.evaluation.retrieval import QuerybankNorm, retrieval_metrics
  from jclip.runs.restore import restore_model

  evaluate_workdir(EvalRequest(workdir=workdir_copy, querybank="train", querybank_size=40))
  saved = _read(workdir_copy, "val_retrieval.json")
  restored = restore_model(workdir_copy)
  val, bank = embedded_split(restored), embedded_split(restored, "train")
  test = (val.image_emb_ND, val.text_emb_MD, val.text_to_image_M)
  plain = {key: value for key, value in saved.items() if key != "querybank"}
  assert plain == pytest.approx(retrieval_metrics(*test))
  normalised = retrieval_metrics(
    *test,
    i2t_norm=QuerybankNorm.from_bank(bank.image_emb_ND[:40], val.text_emb_MD),
    t2i_norm=QuerybankNorm.from_bank(bank.text_emb_MD[: 40 * 5], val.image_emb_ND),
  )
  assert saved["querybank"] == pytest.approx(
    {"bank": "40 images and 200 captions of train[:40]", "beta": 20.0, **normalised}
  )
  assert "val retrieval with querybank normalisation (bank: 40 images" in capsys.readouterr().out
  with pytest.raises(UserError, match="--querybank=val is the split being evaluated"):
    EvalRequest(workdir=workdir_copy, querybank="val")
