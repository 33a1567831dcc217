"""The whole evaluation of a trained model on one split: files to keep, and a summary to read.

`run_suite` reuses the embeddings that retrieval already computed (`embed_split`) and runs, for a
split <s>, each part with its own module:

  zero-shot    every image classified by the nearest class prompt          zeroshot.py
               scored by top-1/top-5, macro P/R/F1, a confusion matrix     classification_metrics.py
               -> <s>_zeroshot.json, <s>_zeroshot_confusion.png
               (and <s>_zeroshot_image<i>.json: one image's class probabilities, if asked)
  similarity   the caption x image cosine matrix of a few matched pairs    similarity.py
               -> <s>_similarity.json, <s>_similarity.png
  probes       linear and k-NN classifiers on the frozen image embeddings  probes.py
               and on the caption embeddings (folds grouped by image)
               -> <s>_probes.json
  projection   the image embeddings in 2-D, one colour per class           plots.py
               -> <s>_projection.json, <s>_projection.png
  curves       loss, temperature, accuracy, learning rate of the training  plots.py
               -> training_curves.json, training_curves.png (from <workdir>/metrics.jsonl)

Every PNG has a JSON beside it holding the numbers it draws. Zero-shot, probes and the projection
need a class per image; a split without classes (a folder with no category column) gets the
similarity and the curves only, and says so.

Reading the parts together: probes measure what the image embeddings know about the classes;
zero-shot measures whether the text tower can name it. Zero-shot far below the linear probe
points at the prompts or the class names, not at the image tower; a probe near chance (1 / number
of classes) means the images are not separated by class at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from typing import Mapping, Sequence

import numpy as np

from jclip.errors import UserError
from jclip.evaluation.classification_metrics import (
    classification_metrics, format_per_class_table, save_confusion_matrix_png)
from jclip.evaluation.embedding import TrainedModel
from jclip.evaluation.plots import save_embedding_projection, save_training_curves
from jclip.evaluation.probes import knn_probe, linear_probe
from jclip.evaluation.similarity import (save_similarity_heatmap, similarity_matrix,
                                         similarity_summary)
from jclip.evaluation.zeroshot import class_prompts, softmax, zero_shot_logits, zero_shot_weights
from jclip.runs.metrics import read_metrics


@dataclasses.dataclass
class SuiteOptions:
  """The choices of the suite; each field is the eval.py flag of the same name."""

  # Zero-shot templates, each with '{}' for the class name; None: zeroshot.DEFAULT_TEMPLATES.
  templates: Sequence[str] | None = None
  # {class name: [prompt, ...]}: full sentences that replace the templates for those classes.
  class_prompts: Mapping[str, Sequence[str]] | None = None
  # An image index of the split whose zero-shot class probabilities are printed and saved.
  probs_for_image: int | None = None
  probe_folds: int = 5
  probe_neighbors: int = 5
  projection: str = "pca"  # or "umap" (needs umap-learn)
  similarity_pairs: int = 8


def check_options(options: SuiteOptions, class_names: Sequence[str] | None,
                  num_images: int) -> None:
  """Raises ValueError, naming the option, for a choice that cannot work on this split; cheap, so a
  caller can check before embedding."""
  if options.probs_for_image is not None and not 0 <= options.probs_for_image < num_images:
    raise UserError(f"probs_for_image={options.probs_for_image} is not an image of this split: "
                     f"give an index in [0, {num_images}).")
  if class_names is not None:
    class_prompts(class_names, options.templates, options.class_prompts)  # unknown classes raise


def _save_json(data: dict, path: str, written: list[str]) -> None:
  with open(path, "w") as f:
    json.dump(data, f, indent=2)
  written.append(path)


def _zero_shot(trained, split, class_names, labels_N, image_emb_ND, options, out_dir, written):
  """Writes the zero-shot JSON and confusion matrix, prints the scores; returns logits [N, C]."""
  prompts = class_prompts(class_names, options.templates, options.class_prompts)
  class_weights_CD = zero_shot_weights(trained.embed_texts, prompts)
  scale = trained.logit_scale
  logits_NC = zero_shot_logits(image_emb_ND, class_weights_CD, scale)
  metrics = classification_metrics(labels_N, class_names, logits_NC=logits_NC)
  _save_json({"split": split, "scale": scale, "prompts": dict(zip(class_names, prompts)),
              **metrics}, os.path.join(out_dir, f"{split}_zeroshot.json"), written)
  path = os.path.join(out_dir, f"{split}_zeroshot_confusion.png")
  save_confusion_matrix_png(metrics["confusion_matrix"], class_names, path,
                            title=f"{split} zero-shot, top-1 {metrics['top1_accuracy']:.3f}")
  written.append(path)
  # With 5 classes or fewer every image's class is in its top 5: the figure says nothing.
  top5 = (f"  top-5 {metrics['top5_accuracy']:.3f}" if len(class_names) > 5 else
          f"  (top-5 is 1 by construction with {len(class_names)} classes)")
  print(f"{split} zero-shot ({len(labels_N)} images, {len(class_names)} classes, "
        f"{sum(map(len, prompts))} prompts, scale {scale:.2f}): "
        f"top-1 {metrics['top1_accuracy']:.3f}{top5}\n"
        f"  macro precision {metrics['macro_precision']:.3f}  recall "
        f"{metrics['macro_recall']:.3f}  F1 {metrics['macro_f1']:.3f}")
  print(textwrap.indent(format_per_class_table(metrics["per_class"]), "  "))
  return logits_NC


def _image_probabilities(source, split, class_names, labels_N, logits_NC, index, out_dir, written):
  probs_C = softmax(logits_NC[index])
  true_class = class_names[labels_N[index]]
  caption = source.captions(index)[0]
  _save_json({"split": split, "image": index, "true_class": true_class, "caption": caption,
              "probabilities": dict(zip(class_names, probs_C.tolist()))},
             os.path.join(out_dir, f"{split}_zeroshot_image{index}.json"), written)
  print(f"Zero-shot probabilities of {split} image {index} (true class {true_class}; {caption!r}):")
  width = max(map(len, class_names))
  for c in np.argsort(-probs_C, kind="stable"):
    print(f"  {class_names[c]:<{width}}  {probs_C[c]:.3f}")


def _similarity(split, image_emb_ND, text_emb_MD, text_to_image_M, captions, num_pairs, out_dir,
                written):
  # Pairs spread over the split (a folder lists its classes in blocks), each image with its first
  # caption (np.unique gives the first caption index of every image).
  images_P = np.linspace(0, len(image_emb_ND) - 1, min(num_pairs, len(image_emb_ND)))
  images_P = images_P.round().astype(int)
  captions_P = np.unique(text_to_image_M, return_index=True)[1][images_P]
  sim_PP = similarity_matrix(image_emb_ND[images_P], text_emb_MD[captions_P])
  summary = similarity_summary(sim_PP)
  pair_captions = [captions[m] for m in captions_P]
  _save_json({"split": split, **summary, "images": images_P.tolist(), "captions": pair_captions,
              "matrix": sim_PP.tolist()}, os.path.join(out_dir, f"{split}_similarity.json"),
             written)
  path = os.path.join(out_dir, f"{split}_similarity.png")
  save_similarity_heatmap(sim_PP, pair_captions, path, [f"image {i}" for i in images_P])
  written.append(path)
  print(f"{split} similarity of {len(images_P)} matched pairs: separation "
        f"{summary['separation_score']:.3f} (matched {summary['matched_mean']:.3f}, unmatched "
        f"{summary['unmatched_mean']:.3f})  trace {summary['trace']:.3f} of {len(images_P)}")


def _probes(split, embedded, labels_N, options, out_dir, written):
  """Linear and k-NN probes on the image embeddings, and on the caption embeddings (each labelled
  with its image's class; the folds keep an image's captions together)."""
  image_emb_ND, text_emb_MD, text_to_image_M, _ = embedded
  inputs = {"image": (image_emb_ND, labels_N, None),
            "text": (text_emb_MD, labels_N[text_to_image_M], text_to_image_M)}
  results = {}
  try:
    for name, (emb, labels, groups) in inputs.items():
      results[name] = {
          "linear": linear_probe(emb, labels, options.probe_folds, groups_N=groups),
          "knn": {"num_neighbors": options.probe_neighbors,
                  **knn_probe(emb, labels, options.probe_neighbors, options.probe_folds,
                              groups_N=groups)}}
  except ValueError as e:  # too few images of a class for the folds, or a single class
    print(f"{split} probes skipped (probe_folds={options.probe_folds}, probe_neighbors="
          f"{options.probe_neighbors}): {e}")
    return
  _save_json({"split": split, **results}, os.path.join(out_dir, f"{split}_probes.json"), written)
  print(f"{split} probes, {options.probe_folds}-fold (mean ± std; caption folds grouped by image):")
  for name, result in results.items():
    for probe, scores in (("linear", result["linear"]),
                          (f"{options.probe_neighbors}-NN", result["knn"])):
      print(f"  {name:<5} {probe:<6}  accuracy {scores['accuracy_mean']:.3f} ± "
            f"{scores['accuracy_std']:.3f}  macro F1 {scores['macro_f1_mean']:.3f} ± "
            f"{scores['macro_f1_std']:.3f}")


def _projection(split, image_emb_ND, labels_N, class_names, method, out_dir, written):
  path = os.path.join(out_dir, f"{split}_projection.png")
  points_N2 = save_embedding_projection(image_emb_ND, labels_N, class_names, path, method,
                                        title=f"{split} image embeddings, {method.upper()}")
  written.append(path)
  _save_json({"split": split, "method": method, "class_names": list(class_names),
              "labels": labels_N.tolist(), "points": points_N2.tolist()},
             os.path.join(out_dir, f"{split}_projection.json"), written)


def _training_curves(workdir, out_dir, written):
  try:
    records = read_metrics(workdir)
  except FileNotFoundError:
    records = []
  if not records:
    print(f"Training curves skipped: {workdir} has no metrics.jsonl records (train.py writes one "
          "every config.log_every steps).")
    return
  path = os.path.join(out_dir, "training_curves.png")
  panels = save_training_curves(records, path, title=workdir)
  written.append(path)
  _save_json({"panels": panels, "records": records},
             os.path.join(out_dir, "training_curves.json"), written)


def run_suite(trained: TrainedModel, source, class_names: Sequence[str] | None,
              labels_N: np.ndarray | None, embedded: tuple, out_dir: str, workdir: str,
              options: SuiteOptions | None = None) -> list[str]:
  """Runs every part of the module docstring on one split, prints a summary, returns the paths
  written.

  Args:
    trained: the model: its text tower embeds the prompts, its logit scale sharpens zero-shot.
    source: the split (its `split` name prefixes the files; its captions label the printout).
    class_names, labels_N: from `class_names_of` and `labels_of`; both None for a split without
      classes (zero-shot, probes and projection are then skipped).
    embedded: (image_emb [N, D], text_emb [M, D], text_to_image [M], captions [M]) of the split,
      as `embed_split` returns them.
    out_dir: where the files go (eval.py: <workdir>/eval); created if missing.
    workdir: the training workdir, whose metrics.jsonl gives the training curves.
  """
  options = options or SuiteOptions()
  image_emb_ND, text_emb_MD, text_to_image_M, captions = embedded
  if (class_names is None) != (labels_N is None):
    raise ValueError("Give both class_names and labels_N (see class_names_of, labels_of), or "
                     "neither for a split without classes.")
  check_options(options, class_names, len(image_emb_ND))
  os.makedirs(out_dir, exist_ok=True)
  split = source.split
  written = []
  if labels_N is None:
    print(f"{split} has no class labels: zero-shot, probes and the projection are skipped (a "
          "folder needs a 'category' column in captions.tsv).")
  else:
    logits_NC = _zero_shot(trained, split, class_names, labels_N, image_emb_ND, options, out_dir,
                           written)
    if options.probs_for_image is not None:
      _image_probabilities(source, split, class_names, labels_N, logits_NC,
                           options.probs_for_image, out_dir, written)
  _similarity(split, image_emb_ND, text_emb_MD, text_to_image_M, captions,
              options.similarity_pairs, out_dir, written)
  if labels_N is not None:
    _probes(split, embedded, labels_N, options, out_dir, written)
    _projection(split, image_emb_ND, labels_N, class_names, options.projection, out_dir, written)
  _training_curves(workdir, out_dir, written)
  print(textwrap.fill(f"Saved in {out_dir}: " + ", ".join(map(os.path.basename, written)),
                      width=100, subsequent_indent="  ", break_long_words=False,
                      break_on_hyphens=False))
  return written
