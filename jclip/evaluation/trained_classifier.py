"""Evaluating a classifier workdir (configs/flickr4_*_classifier.py) on a labelled split.

An image classifier is scored on every image; a text classifier on every caption, each labelled
with its image's class. Writes <split>_classification.json (accuracy, macro precision / recall /
F1, the per-class table, the confusion matrix) and <split>_confusion.png.
"""

from __future__ import annotations

import json
import os
import textwrap

import jax

from jclip.data.sources import class_names_of, labels_of
from jclip.errors import UserError
from jclip.evaluation.classification_metrics import (
    classification_metrics, format_per_class_table, save_confusion_matrix_png)
from jclip.evaluation.embedding import apply_to_images, apply_to_texts, split_captions
from jclip.runs.restore import RestoredModel


def classifier_logits(restored: RestoredModel, source, batch_size: int = 256):
  """(logits [N, C], labels [N]) over the split: images for an image classifier, every caption
  for a text classifier."""
  config = restored.config
  logits_fn = jax.jit(lambda x: restored.model.apply(restored.variables, x))
  labels_N = labels_of(source)
  if config.task == "image_classifier":
    return apply_to_images(logits_fn, source, batch_size, config.data.image_size), labels_N
  captions, text_to_image_M = split_captions(source)
  return (apply_to_texts(logits_fn, captions, restored.tokenizer, config.data.max_text_len,
                         batch_size), labels_N[text_to_image_M])


def evaluate_classifier(restored: RestoredModel, source, split: str, out_dir: str,
                        batch_size: int = 256) -> dict:
  """Prints and writes the classification metrics of a classifier on `source`; returns them."""
  class_names = class_names_of(source)
  if class_names is None:
    raise UserError(f"The {split} split has no class labels: a classifier is evaluated on a "
                     "folder whose captions.tsv has a 'category' column.")
  task = restored.config.task
  logits_NC, labels_N = classifier_logits(restored, source, batch_size)
  metrics = classification_metrics(labels_N, class_names, logits_NC=logits_NC)
  path = os.path.join(out_dir, f"{split}_classification.json")
  with open(path, "w") as f:
    json.dump({"task": task, "split": split, **metrics}, f, indent=2)
  png = os.path.join(out_dir, f"{split}_confusion.png")
  save_confusion_matrix_png(metrics["confusion_matrix"], class_names, png,
                            title=f"{task}, {split}: accuracy {metrics['top1_accuracy']:.3f}")
  what = "images" if task == "image_classifier" else "captions"
  print(f"{task} on {split} ({len(labels_N)} {what}): accuracy "
        f"{metrics['top1_accuracy']:.3f}  macro precision {metrics['macro_precision']:.3f}  "
        f"recall {metrics['macro_recall']:.3f}  F1 {metrics['macro_f1']:.3f}")
  print(textwrap.indent(format_per_class_table(metrics["per_class"]), "  "))
  print(f"Saved {path}, {png}")
  return metrics
