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
import numpy as np

from jclip import tasks
from jclip.evaluation.classification import (classification_metrics, format_per_class_table,
                                             save_confusion_matrix_png)
from jclip.evaluation.embedding import apply_to_images, apply_to_texts


def classifier_logits(config, state, tokenizer, source, batch_size: int = 256):
  """(logits [N, C], labels [N]) over the split: images for an image classifier, every caption
  for a text classifier."""
  model = tasks.get_task(config).build_model(config.model)
  logits_fn = jax.jit(lambda x: model.apply(state.variables, x))
  labels_N = source.labels() if hasattr(source, "labels") else np.array(
      [source[i]["label"] for i in range(len(source))])
  if config.task == "image_classifier":
    return apply_to_images(logits_fn, source, batch_size, config.data.image_size), labels_N
  captions = [source.captions(i) for i in range(len(source))]
  texts = [caption for image_captions in captions for caption in image_captions]
  labels = np.repeat(labels_N, [len(c) for c in captions])
  return apply_to_texts(logits_fn, texts, tokenizer, config.data.max_text_len, batch_size), labels


def evaluate_classifier(config, state, tokenizer, source, split: str, out_dir: str,
                        batch_size: int = 256) -> dict:
  """Prints and writes the classification metrics of a classifier on `source`; returns them."""
  class_names = getattr(source, "class_names", None)
  if class_names is None:
    raise ValueError(f"The {split} split has no class labels: a classifier is evaluated on a "
                     "folder whose captions.tsv has a 'category' column.")
  logits_NC, labels_N = classifier_logits(config, state, tokenizer, source, batch_size)
  metrics = classification_metrics(labels_N, class_names, logits_NC=logits_NC)
  path = os.path.join(out_dir, f"{split}_classification.json")
  with open(path, "w") as f:
    json.dump({"task": config.task, "split": split, **metrics}, f, indent=2)
  png = os.path.join(out_dir, f"{split}_confusion.png")
  save_confusion_matrix_png(metrics["confusion_matrix"], class_names, png,
                            title=f"{config.task}, {split}: accuracy {metrics['top1_accuracy']:.3f}")
  what = "images" if config.task == "image_classifier" else "captions"
  print(f"{config.task} on {split} ({len(labels_N)} {what}): accuracy "
        f"{metrics['top1_accuracy']:.3f}  macro precision {metrics['macro_precision']:.3f}  "
        f"recall {metrics['macro_recall']:.3f}  F1 {metrics['macro_f1']:.3f}")
  print(textwrap.indent(format_per_class_table(metrics["per_class"]), "  "))
  print(f"Saved {path}, {png}")
  return metrics
