"""Plots: PNGs are written and readable, the projection is PCA's, bad input is refused."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

from jclip.evaluation.plots import save_embedding_projection, save_training_curves
from jclip.runs.metrics import MetricWriter, read_metrics


def _assert_png(path):
  with Image.open(path) as image:
    assert image.format == "PNG" and min(image.size) > 100


def test_pca_projection_png_and_points(tmp_path):
  emb = np.random.default_rng(0).normal(size=(30, 6)) * [10.0, 3.0, 1.0, 0.5, 0.2, 0.1]
  labels = np.arange(30) % 3
  path = tmp_path / "pca.png"
  points = save_embedding_projection(emb, labels, ["a", "b", "c"], str(path))
  _assert_png(path)
  # PCA by hand: the centred data on its two leading right singular vectors, each up to a sign.
  centred = emb - emb.mean(axis=0)
  expected = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
  np.testing.assert_allclose(np.abs(points), np.abs(expected), rtol=1e-4, atol=1e-4)


def test_projection_rejects_bad_input(tmp_path):
  path = str(tmp_path / "x.png")
  emb = np.ones((5, 4))
  with pytest.raises(ValueError, match="one label per embedding"):
    save_embedding_projection(emb, np.zeros(4, int), ["a"], path)
  with pytest.raises(ValueError, match=r"\[0, 2\)"):
    save_embedding_projection(emb, np.array([0, 1, 2, 0, 1]), ["a", "b"], path)
  with pytest.raises(ValueError, match="choose one of"):
    save_embedding_projection(emb, np.zeros(5, int), ["a"], path, method="tsne")


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap is installed")
def test_umap_without_the_package_says_how_to_install_it(tmp_path):
  with pytest.raises(ValueError, match="pip install umap-learn"):
    save_embedding_projection(
      np.eye(4), np.zeros(4, int), ["a"], str(tmp_path / "u.png"), method="umap"
    )


def test_training_curves_from_a_metrics_log(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in range(0, 50, 10):
    writer.write(
      step,
      {
        "loss": 4.0 - step / 20,
        "temperature": 0.07 - step / 2000,
        "logit_scale": 14.3,
        "i2t_accuracy": step / 100,
        "t2i_accuracy": step / 120,
        "learning_rate": 1e-3,
      },
    )
  path = tmp_path / "curves.png"
  panels = save_training_curves(read_metrics(str(tmp_path)), str(path))
  _assert_png(path)
  assert len(panels) == 4 and panels[0] == "loss"


def test_training_curves_draw_each_evaluator_on_its_own_panel(tmp_path):
  records = [
    {"step": 2, "loss": 3.0},
    {"step": 4, "loss": 2.5, "val/i2t_r1": 0.1, "val/rsum": 0.9, "zeroshot/top1": 0.4},
  ]
  panels = save_training_curves(records, str(tmp_path / "curves.png"))
  assert panels == ["loss", "evaluator val", "evaluator zeroshot"]


def test_training_curves_draw_only_what_is_present(tmp_path):
  path = tmp_path / "curves.png"
  assert save_training_curves([{"step": 0, "loss": 2.0}, {"step": 5, "loss": 1.0}], str(path)) == [
    "loss"
  ]
  _assert_png(path)
  with pytest.raises(ValueError, match="none of the plotted metrics"):
    save_training_curves([{"step": 0, "pairs_per_sec": 3.0}], str(path))
  with pytest.raises(ValueError, match="'step'"):
    save_training_curves([{"loss": 1.0}], str(path))
  with pytest.raises(ValueError, match="non-empty"):
    save_training_curves([], str(path))
