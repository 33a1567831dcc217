"""Zero-shot classification: a classifier built from class names alone, with no training.

CLIP turns every class into a sentence ("a photo of a dog."), embeds it with the text tower, and
classifies an image by the caption it is closest to. One sentence per class is noisy (the word
"dog" in one phrasing), so CLIP writes each class into several templates and averages them
("prompt ensembling", Radford et al. 2021, section 3.1.4):

    w_c = normalise( mean_p normalise(embed(prompt_p of class c)) )      one unit row per class
    logits_NC = scale * normalise(image_emb_ND) @ w_CD.T                 cosine similarity x scale

Averaging unit vectors keeps each prompt's vote equal; the mean is shorter than one when prompts
disagree, so it is re-normalised to make every class row comparable. `scale` plays the role of the
trained temperature exp(t) (CLIP uses 100): it only sharpens the softmax, never changes the argmax.

A class can also be described by its own prompts instead of the shared templates (a JSON file of
{class_name: [prompt, ...]}), to test descriptive prompts such as "a photo of a dog, a furry pet".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jclip.errors import UserError
from jclip.models.clip import l2_normalize

PLACEHOLDER = "{}"
DEFAULT_TEMPLATES = (
  "a photo of a {}.",
  "a picture of a {}.",
  "a photo of the {}.",
  "an image of a {}.",
  "a photo of a small {}.",
  "a photo of a large {}.",
  "a drawing of a {}.",
  "a {}.",
)


def check_templates(templates: Sequence[str], where: str) -> None:
  """Raises UserError, naming `where` and the template, unless every template has a '{}'."""
  if not templates:
    raise UserError(f"{where} holds no templates; give at least one, e.g. 'a photo of a {{}}.'.")
  for number, template in enumerate(templates, 1):
    if PLACEHOLDER not in template:
      raise UserError(
        f"Template {number} of {where}, {template!r}, has no '{{}}' where the class "
        "name goes; add one, e.g. 'a photo of a {}.'."
      )


def load_templates(path: str) -> list[str]:
  """Templates from a text file, one per line, each with a '{}' for the class name; blank lines are
  skipped."""
  with open(path) as f:
    templates = [line.strip() for line in f if line.strip()]
  check_templates(templates, path)
  return templates


def load_class_prompts(path: str) -> dict[str, list[str]]:
  """Per-class prompts from a JSON file {class_name: [prompt, ...]} (full sentences, no '{}')."""
  with open(path) as f:
    per_class = json.load(f)
  if not isinstance(per_class, dict) or not per_class:
    raise UserError(f"{path} must hold a non-empty JSON object {{class_name: [prompt, ...]}}.")
  for name, prompts in per_class.items():
    if (
      not isinstance(prompts, list)
      or not prompts
      or not all(isinstance(p, str) and p.strip() for p in prompts)
    ):
      raise UserError(
        f"{path}: class {name!r} must map to a non-empty list of prompt strings, got {prompts!r}."
      )
  return per_class


def class_prompts(
  class_names: Sequence[str],
  templates: Sequence[str] | None = None,
  per_class: Mapping[str, Sequence[str]] | None = None,
) -> list[list[str]]:
  """The prompts of every class, in class order.

  A class named in `per_class` uses exactly those prompts; every other class is written into each
  of `templates` (default: DEFAULT_TEMPLATES).
  """
  templates = DEFAULT_TEMPLATES if templates is None else templates
  per_class = per_class or {}
  check_templates(templates, "templates")
  unknown = sorted(set(per_class) - set(class_names))
  if unknown:
    raise UserError(
      f"per_class names classes that are not in class_names: {unknown}; fix their "
      f"spelling (classes: {list(class_names)})."
    )
  # str.replace rather than str.format: a template may contain other braces.
  return [
    list(per_class[name])
    if name in per_class
    else [template.replace(PLACEHOLDER, name) for template in templates]
    for name in class_names
  ]


def zero_shot_weights(
  embed_texts: Callable[[list[str]], np.ndarray], prompts_per_class: Sequence[Sequence[str]]
) -> np.ndarray:
  """Unit class embeddings [C, D]: each class's prompt embeddings normalised, averaged and
  re-normalised.

  Args:
    embed_texts: list of N strings -> embeddings [N, D] (e.g. TrainedModel.embed_texts); it is
      called once with every prompt, so batching is its own business.
    prompts_per_class: C non-empty lists of prompts, e.g. from `class_prompts`.
  """
  counts = [len(prompts) for prompts in prompts_per_class]
  if not counts or min(counts) == 0:
    raise ValueError(
      "prompts_per_class needs at least one class and one prompt per class; "
      f"got prompt counts {counts}."
    )
  prompts = [prompt for class_list in prompts_per_class for prompt in class_list]
  prompt_emb_PD = np.asarray(embed_texts(prompts), np.float32)
  if prompt_emb_PD.ndim != 2 or len(prompt_emb_PD) != len(prompts):
    raise ValueError(
      f"embed_texts returned shape {prompt_emb_PD.shape} for {len(prompts)} "
      "prompts; it must return one row per prompt, [N, D]."
    )
  unit_PD = np.asarray(l2_normalize(prompt_emb_PD))
  starts = np.cumsum([0] + counts[:-1])
  mean_CD = np.add.reduceat(unit_PD, starts, axis=0) / np.asarray(counts, np.float32)[:, None]
  return np.asarray(l2_normalize(mean_CD))


def zero_shot_logits(
  image_emb_ND: np.ndarray, class_weights_CD: np.ndarray, scale: float = 100.0
) -> np.ndarray:
  """scale x cosine similarity [N, C] of every image to every class; argmax is the prediction."""
  image_emb_ND = np.asarray(image_emb_ND, np.float32)
  class_weights_CD = np.asarray(class_weights_CD, np.float32)
  if (
    image_emb_ND.ndim != 2
    or class_weights_CD.ndim != 2
    or (image_emb_ND.shape[1] != class_weights_CD.shape[1])
  ):
    raise ValueError(
      f"image_emb {image_emb_ND.shape} and class_weights {class_weights_CD.shape} "
      "must be [N, D] and [C, D] with the same D (the same model's embeddings)."
    )
  return scale * np.asarray(l2_normalize(image_emb_ND)) @ class_weights_CD.T


def softmax(logits_NC: np.ndarray) -> np.ndarray:
  """Class probabilities [N, C] of logits (each row sums to 1)."""
  # Subtracting the row maximum changes nothing mathematically and keeps exp from overflowing.
  shifted_NC = logits_NC - np.max(logits_NC, axis=-1, keepdims=True)
  exp_NC = np.exp(shifted_NC)
  return exp_NC / np.sum(exp_NC, axis=-1, keepdims=True)


def zero_shot_probabilities(
  image_emb_ND: np.ndarray,
  embed_texts: Callable[[list[str]], np.ndarray],
  class_names: Sequence[str],
  templates: Sequence[str] | None = None,
  per_class: Mapping[str, Sequence[str]] | None = None,
  scale: float = 100.0,
) -> np.ndarray:
  """Class probabilities [N, C] of images among `class_names`: the classes' prompts (see
  `class_prompts`) embedded and ensembled, the images' cosine similarities to them times `scale`,
  a softmax."""
  class_weights_CD = zero_shot_weights(
    embed_texts, class_prompts(class_names, templates, per_class)
  )
  return softmax(zero_shot_logits(image_emb_ND, class_weights_CD, scale))
