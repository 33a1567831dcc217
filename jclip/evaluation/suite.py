"""The whole evaluation of a trained model on one split: files to keep, and a summary to read.

`run_suite` builds on the evaluators of the training loop (evaluators.py): it reuses the split's
embeddings that retrieval already computed (EvalSplit.embed) and runs, for a split <s>, each part
with its own module:

  zero-shot    every image classified by the nearest class prompt          ZeroShotEvaluator
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
from collections.abc import Mapping, Sequence

import numpy as np

from jclip.errors import UserError
from jclip.evaluation.embedding import EmbeddedSplit, EvalSplit, Predictor
from jclip.evaluation.evaluators import ZeroShotEvaluator
from jclip.evaluation.outputs import EvalOutputs
from jclip.evaluation.plots import save_training_curves, write_projection
from jclip.evaluation.probes import knn_probe, linear_probe
from jclip.evaluation.query import format_probabilities
from jclip.evaluation.similarity import (
  save_similarity_heatmap,
  similarity_matrix,
  similarity_summary,
)
from jclip.evaluation.zeroshot import class_prompts, softmax
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


def check_options(
  options: SuiteOptions, class_names: Sequence[str] | None, num_images: int
) -> None:
  """Raises UserError, naming the option, for a choice that cannot work on this split; cheap, so a
  caller can check before embedding."""
  if options.probs_for_image is not None and not 0 <= options.probs_for_image < num_images:
    raise UserError(
      f"probs_for_image={options.probs_for_image} is not an image of this split: "
      f"give an index in [0, {num_images})."
    )
  if class_names is not None:
    class_prompts(class_names, options.templates, options.class_prompts)  # unknown classes raise


def _image_probabilities(split: EvalSplit, logits_NC, index: int, outputs: EvalOutputs) -> None:
  probs_C = softmax(logits_NC[index])
  class_names = split.class_names
  true_class = class_names[split.labels_N[index]]
  caption = split.source.captions(index)[0]
  outputs.json(
    f"{split.name}_zeroshot_image{index}.json",
    {
      "split": split.name,
      "image": index,
      "true_class": true_class,
      "caption": caption,
      "probabilities": dict(zip(class_names, probs_C.tolist(), strict=True)),
    },
  )
  print(
    f"Zero-shot probabilities of {split.name} image {index} (true class {true_class}; "
    f"{caption!r}):\n{format_probabilities(class_names, probs_C)}"
  )


def _similarity(embedded: EmbeddedSplit, num_pairs: int, outputs: EvalOutputs) -> None:
  # Pairs spread over the split (a folder lists its classes in blocks), each image with its first
  # caption.
  num_images = len(embedded.image_emb_ND)
  images_R = np.linspace(0, num_images - 1, min(num_pairs, num_images)).round().astype(int)
  captions_R = embedded.first_caption_N[images_R]
  sim_RR = similarity_matrix(embedded.image_emb_ND[images_R], embedded.text_emb_MD[captions_R])
  summary = similarity_summary(sim_RR)
  pair_captions = [embedded.captions[m] for m in captions_R]
  name = embedded.split
  outputs.json(
    f"{name}_similarity.json",
    {
      "split": name,
      **summary,
      "images": images_R.tolist(),
      "captions": pair_captions,
      "matrix": sim_RR.tolist(),
    },
  )
  save_similarity_heatmap(
    sim_RR, pair_captions, outputs.path(f"{name}_similarity.png"), [f"image {i}" for i in images_R]
  )
  print(
    f"{name} similarity of {len(images_R)} matched pairs: separation "
    f"{summary['separation_score']:.3f} (matched {summary['matched_mean']:.3f}, unmatched "
    f"{summary['unmatched_mean']:.3f})  trace {summary['trace']:.3f} of {len(images_R)}"
  )


def _probes(embedded: EmbeddedSplit, options: SuiteOptions, outputs: EvalOutputs) -> None:
  """Linear and k-NN probes on the image embeddings, and on the caption embeddings (each labelled
  with its image's class; the folds keep an image's captions together)."""
  inputs = {
    "image": (embedded.image_emb_ND, embedded.labels_N, None),
    "text": (embedded.text_emb_MD, embedded.caption_labels_M, embedded.text_to_image_M),
  }
  folds, neighbors, results = options.probe_folds, options.probe_neighbors, {}
  try:
    for name, (emb, labels, groups) in inputs.items():
      results[name] = {
        "linear": linear_probe(emb, labels, folds, groups_N=groups),
        "knn": {
          "num_neighbors": neighbors,
          **knn_probe(emb, labels, neighbors, folds, groups_N=groups),
        },
      }
  except ValueError as e:  # too few images of a class for the folds, or a single class
    print(
      f"{embedded.split} probes skipped (probe_folds={folds}, probe_neighbors={neighbors}): {e}"
    )
    return
  outputs.json(f"{embedded.split}_probes.json", {"split": embedded.split, **results})
  print(f"{embedded.split} probes, {folds}-fold (mean ± std; caption folds grouped by image):")
  for name, result in results.items():
    for probe, scores in (("linear", result["linear"]), (f"{neighbors}-NN", result["knn"])):
      print(
        f"  {name:<5} {probe:<6}  accuracy {scores['accuracy_mean']:.3f} ± "
        f"{scores['accuracy_std']:.3f}  macro F1 {scores['macro_f1_mean']:.3f} ± "
        f"{scores['macro_f1_std']:.3f}"
      )


def _projection(embedded: EmbeddedSplit, method: str, outputs: EvalOutputs) -> None:
  name = embedded.split
  write_projection(
    outputs,
    f"{name}_projection",
    embedded.image_emb_ND,
    embedded.labels_N,
    embedded.class_names,
    method,
    title=f"{name} image embeddings, {method.upper()}",
    split=name,
  )


def _training_curves(workdir: str, outputs: EvalOutputs) -> None:
  try:
    records = read_metrics(workdir)
  except FileNotFoundError:
    records = []
  if not records:
    print(
      f"Training curves skipped: {workdir} has no metrics.jsonl records (train.py writes one "
      "every config.log_every steps)."
    )
    return
  panels = save_training_curves(records, outputs.path("training_curves.png"), title=workdir)
  outputs.json("training_curves.json", {"panels": panels, "records": records})


def run_suite(
  split: EvalSplit,
  predictor: Predictor,
  variables,
  outputs: EvalOutputs,
  workdir: str,
  options: SuiteOptions | None = None,
  batch_size: int = 256,
) -> None:
  """Runs every part of the module docstring on one split and prints a summary; the files go to
  `outputs` (eval.py: <workdir>/eval).

  Args:
    split: the split (its name prefixes the files; splits without classes skip zero-shot, probes
      and the projection).
    predictor, variables: the CLIP model under evaluation and its weights.
    workdir: the training workdir, whose metrics.jsonl gives the training curves.
  """
  options = options or SuiteOptions()
  check_options(options, split.class_names, len(split.source))
  embedded = split.embed(predictor, variables, batch_size)
  if split.class_names is None:
    print(
      f"{split.name} has no class labels: zero-shot, probes and the projection are skipped (a "
      "folder needs a 'category' column in captions.tsv)."
    )
  else:
    zero_shot = ZeroShotEvaluator(
      split,
      predictor,
      batch_size,
      templates=options.templates,
      class_prompts_of=options.class_prompts,
    )
    result = zero_shot(variables)
    zero_shot.report(result, outputs)
    if options.probs_for_image is not None:
      _image_probabilities(split, result["logits_NC"], options.probs_for_image, outputs)
  _similarity(embedded, options.similarity_pairs, outputs)
  if split.class_names is not None:
    _probes(embedded, options, outputs)
    _projection(embedded, options.projection, outputs)
  _training_curves(workdir, outputs)
  print(outputs.summary())
