"""Classification metrics on small hand-worked examples."""

import json

import numpy as np
import pytest
from PIL import Image

from jclip.evaluation.classification_metrics import (
  classification_metrics,
  format_per_class_table,
  per_class_table,
  save_confusion_matrix_png,
  top_k_accuracy,
)

NAMES = ["cat", "dog", "car"]
# true:      0  0  1  1  2  2
# predicted: 0  1  1  1  2  0
LABELS = np.array([0, 0, 1, 1, 2, 2])
PREDICTIONS = np.array([0, 1, 1, 1, 2, 0])


def test_hand_worked_precision_recall_f1():
  metrics = classification_metrics(LABELS, NAMES, predictions_N=PREDICTIONS)
  # cat: predicted at 0 and 5, right once -> P 1/2; 1 of 2 cats found -> R 1/2; F1 1/2.
  # dog: predicted at 1, 2, 3, right twice -> P 2/3; both dogs found -> R 1; F1 2*(2/3)/(5/3) = 4/5.
  # car: predicted at 4, right -> P 1; 1 of 2 cars -> R 1/2; F1 2*(1/2)/(3/2) = 2/3.
  table = {row["class"]: row for row in metrics["per_class"]}
  assert table["cat"] == pytest.approx(
    {"class": "cat", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
  )
  assert table["dog"] == pytest.approx(
    {"class": "dog", "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
  )
  assert table["car"] == pytest.approx(
    {"class": "car", "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
  )
  assert metrics["top1_accuracy"] == pytest.approx(4 / 6)
  assert metrics["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
  assert metrics["macro_recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
  assert metrics["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
  assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
  assert "top5_accuracy" not in metrics
  json.dumps(metrics)  # JSON-able


def test_macro_average_skips_classes_absent_from_the_labels():
  # "car" never occurs and is never predicted: it must not pull the macro values to 2/3.
  metrics = classification_metrics(np.array([0, 1]), NAMES, predictions_N=np.array([0, 1]))
  assert metrics["macro_precision"] == metrics["macro_recall"] == metrics["macro_f1"] == 1.0
  assert metrics["per_class"][2]["support"] == 0


def test_never_predicted_class_gets_zero_precision():
  rows = per_class_table(np.array([0, 1]), np.array([0, 0]), ["a", "b"])
  assert rows[1] == {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
  assert rows[0]["precision"] == 0.5


def test_top_k_from_logits():
  logits = np.array(
    [
      [0.9, 0.1, 0.0, 0.0],  # label 0: rank 1
      [0.5, 0.4, 0.3, 0.2],  # label 2: rank 3
      [0.1, 0.2, 0.3, 0.4],
    ]
  )  # label 0: rank 4
  labels = np.array([0, 2, 0])
  assert top_k_accuracy(labels, logits, 1) == pytest.approx(1 / 3)
  assert top_k_accuracy(labels, logits, 3) == pytest.approx(2 / 3)
  assert top_k_accuracy(labels, logits, 4) == 1.0
  assert top_k_accuracy(labels, logits, 5) == 1.0  # clipped to the 4 classes


def test_ties_rank_the_lower_class_first():
  logits = np.array([[1.0, 1.0, 0.0]])
  assert top_k_accuracy(np.array([0]), logits, 1) == 1.0
  assert top_k_accuracy(np.array([1]), logits, 1) == 0.0


def test_metrics_from_logits_use_argmax_and_report_top5():
  logits = np.eye(3)[PREDICTIONS] * 5.0 + 0.1 * np.eye(3)[LABELS]  # argmax = PREDICTIONS
  from_logits = classification_metrics(LABELS, NAMES, logits_NC=logits)
  from_predictions = classification_metrics(LABELS, NAMES, predictions_N=PREDICTIONS)
  assert from_logits.pop("top5_accuracy") == 1.0  # 3 classes: top-5 is top-3
  assert from_logits == from_predictions


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="exactly one"):
    classification_metrics(LABELS, NAMES)
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    classification_metrics(np.array([0, 3]), NAMES, predictions_N=np.array([0, 1]))
  with pytest.raises(ValueError, match="one column per class"):
    classification_metrics(LABELS, NAMES, logits_NC=np.zeros((6, 4)))
  with pytest.raises(ValueError, match="one prediction"):
    classification_metrics(LABELS, NAMES, predictions_N=PREDICTIONS[:5])
  with pytest.raises(ValueError, match="integer"):
    classification_metrics(LABELS.astype(float), NAMES, predictions_N=PREDICTIONS)


def test_format_per_class_table_has_a_line_per_class():
  text = format_per_class_table(per_class_table(LABELS, PREDICTIONS, NAMES))
  lines = text.splitlines()
  assert len(lines) == 4 and lines[0].split() == ["class", "precision", "recall", "f1", "support"]
  assert lines[2].split() == ["dog", "0.667", "1.000", "0.800", "2"]


def test_confusion_matrix_png(tmp_path):
  path = tmp_path / "confusion.png"
  save_confusion_matrix_png([[1, 1, 0], [0, 2, 0], [1, 0, 1]], NAMES, str(path), title="val")
  with Image.open(path) as image:
    assert image.format == "PNG" and min(image.size) > 100
  with pytest.raises(ValueError, match=r"\[C, C\]"):
    save_confusion_matrix_png(np.zeros((2, 2)), NAMES, str(path))
