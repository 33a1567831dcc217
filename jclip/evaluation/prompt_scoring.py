"""Zero-shot accuracy of candidate prompts on labelled images, for studies that choose prompts.

A study that picks the prompts that score best on some images and reports the figure of those
same images measures its own luck: with a few hundred images, one of many candidates is always
best by chance. So a study takes two disjoint sets of images: it chooses on the SELECTION images
and reports on the EVALUATION images, which the choice never saw.

  ImageSet                 unit image embeddings [N, D] with their classes [N], and a description
  selection_and_evaluation one labelled set split in two, class by class, with a seeded shuffle
  PromptEmbeddings         embed_texts with a memory: a search scores many prompts again and again,
                           each distinct prompt is embedded once
  zero_shot_scores         top-1 accuracy and per-class accuracy of one prompt set on an ImageSet
  PerClassColumns          the per-class accuracy columns of a study's table

Everything here works on embeddings: a model enters only as `embed_texts` (a list of strings ->
[M, D]) and its logit scale, e.g. `jclip.load(workdir)`'s `encode_texts` and `logit_scale`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jclip.errors import UserError
from jclip.evaluation.classification_metrics import classification_metrics
from jclip.evaluation.zeroshot import zero_shot_logits, zero_shot_weights

# Beyond this many classes, tables and PNGs leave the per-class figures to the JSON.
PER_CLASS_SHOWN = 12


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """Images as a study reads them: unit embeddings and the class of each."""

  description: str  # where the images come from, for the printout ("val, 175 of 350 images")
  image_emb_ND: np.ndarray
  labels_N: np.ndarray  # integer indices into the study's class names

  def __len__(self) -> int:
    return len(self.labels_N)

  def subset(self, indices_N: np.ndarray, description: str) -> ImageSet:
    return ImageSet(description, self.image_emb_ND[indices_N], self.labels_N[indices_N])


def selection_and_evaluation(
  images: ImageSet, selection_fraction: float, seed: int
) -> tuple[ImageSet, ImageSet]:
  """`images` split into two disjoint sets, class by class: round(fraction x n_c) of the n_c images
  of class c, shuffled with `seed`, select; the others evaluate. A class of two or more images has
  at least one in each part, so every class is chosen for and scored."""
  if not 0 < selection_fraction < 1:
    raise UserError(
      f"--selection_fraction={selection_fraction}: give a fraction strictly between 0 and 1 "
      "(0.5: half of the images choose the prompts, the other half scores them)."
    )
  rng = np.random.default_rng(seed)
  selection = []
  for label in np.unique(images.labels_N):
    members = rng.permutation(np.flatnonzero(images.labels_N == label))
    count = round(selection_fraction * len(members))
    if len(members) >= 2:
      count = min(max(count, 1), len(members) - 1)
    selection.append(members[:count])
  selection_N = np.sort(np.concatenate(selection))
  evaluation_N = np.setdiff1d(np.arange(len(images)), selection_N)
  if not len(selection_N) or not len(evaluation_N):
    raise UserError(
      f"{images.description}: {len(images)} images leave one part empty at "
      f"--selection_fraction={selection_fraction}; give more images or another fraction."
    )
  where = f"{images.description}, seed {seed}"
  return (
    images.subset(selection_N, f"{len(selection_N)} of the images of {where}"),
    images.subset(evaluation_N, f"the other {len(evaluation_N)} images of {where}"),
  )


class PromptEmbeddings:
  """`embed_texts` that embeds each distinct text once: a call embeds only the texts it has not
  seen, all of them in one call of `embed_texts` (one batch for the model, not one per text)."""

  def __init__(self, embed_texts: Callable[[list[str]], np.ndarray]):
    self._embed_texts = embed_texts
    self._rows: dict[str, np.ndarray] = {}

  @property
  def num_embedded(self) -> int:
    """How many distinct texts were embedded so far."""
    return len(self._rows)

  def prepare(self, texts: Sequence[str]) -> None:
    """Embeds, in one call, those of `texts` not embedded yet."""
    new = [text for text in dict.fromkeys(texts) if text not in self._rows]
    if new:
      self._rows.update(zip(new, np.asarray(self._embed_texts(new), np.float32), strict=True))

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Embeddings [M, D] of `texts`, in order."""
    self.prepare(texts)
    return np.stack([self._rows[text] for text in texts])


def zero_shot_scores(
  images: ImageSet,
  class_names: Sequence[str],
  prompts_per_class: Sequence[Sequence[str]],
  embed_texts: Callable[[list[str]], np.ndarray],
  scale: float,
) -> dict:
  """{"top1": accuracy, "per_class": {class: the fraction of its images classified as it, None
  for a class without images here}} of zero-shot classification with these prompts (each class's
  averaged, as zeroshot.py does)."""
  class_weights_CD = zero_shot_weights(embed_texts, prompts_per_class)
  logits_NC = zero_shot_logits(images.image_emb_ND, class_weights_CD, scale)
  metrics = classification_metrics(images.labels_N, class_names, logits_NC=logits_NC)
  return {
    "top1": metrics["top1_accuracy"],
    "per_class": {
      row["class"]: row["recall"] if row["support"] else None for row in metrics["per_class"]
    },
  }


class PerClassColumns:
  """The per-class accuracy columns of a study's table: one per class, or none beyond
  PER_CLASS_SHOWN classes (the JSON has them)."""

  def __init__(self, class_names: Sequence[str]):
    self.names = list(class_names) if len(class_names) <= PER_CLASS_SHOWN else []
    self._widths = [max(5, len(name)) for name in self.names]
    self.title = (
      "  per-class accuracy (evaluation)" if self.names else "  (per-class accuracy: in the JSON)"
    )

  def header(self) -> str:
    return "".join(f"  {name:>{w}}" for name, w in zip(self.names, self._widths, strict=True))

  def cells(self, per_class: Mapping[str, float | None]) -> str:
    return "".join(
      f"  {'n/a' if per_class[name] is None else f'{per_class[name]:.3f}':>{w}}"
      for name, w in zip(self.names, self._widths, strict=True)
    )
