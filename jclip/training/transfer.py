"""Starting a model from other checkpoints: CLIP's towers from two trained classifiers (the course
path), its text tower from a Hugging Face BERT-family encoder, its image backbone from
EfficientNet-Lite ImageNet weights.

A classifier's parameters are {"encoder": backbone, "head": ...}. Its backbone has exactly the
parameters of CLIP's tower of the same config except the projection "proj", which CLIP adds (a
dense layer without activation into the shared space) and which stays freshly initialised. The
head is dropped. Every parameter is checked by path and shape before anything is copied.
"""

from __future__ import annotations

import flax
import ml_collections
import numpy as np
from flax import traverse_util

from jclip.config.derived import text_architecture
from jclip.errors import UserError
from jclip.models.pretrained import hf_text_folder, load_hf_text_encoder, load_image_backbone
from jclip.runs.restore import restore_model

CLIP_TOWERS = {"image_classifier": "image_encoder", "text_classifier": "text_encoder"}


class TransferError(UserError):
  """The checkpoint to start from does not fit the model being built."""


def graft(tree: dict, tower: str, encoder: dict, origin: str) -> dict:
  """A copy of `tree` whose `tower` subtree takes every value of `encoder`; the tower's own
  parameters that `encoder` lacks may only be the projection ("proj")."""
  target = traverse_util.flatten_dict(flax.core.unfreeze(tree[tower]), sep="/")
  source = traverse_util.flatten_dict(flax.core.unfreeze(encoder), sep="/")
  missing = sorted(k for k in target if k not in source and not k.startswith("proj/"))
  unexpected = sorted(k for k in source if k not in target)
  mismatched = [
    f"{k}: {np.shape(v)} in {origin}, {np.shape(target[k])} here"
    for k, v in source.items()
    if k in target and np.shape(v) != np.shape(target[k])
  ]
  if missing or unexpected or mismatched:
    raise TransferError(
      f"{origin} does not fit this model's {tower}: the two configs' tower fields must agree "
      "(model.image.* or model.text.*, data.image_size, tokenizer)."
      + "".join(f"\n  - missing: {k}" for k in missing)
      + "".join(f"\n  - unexpected: {k}" for k in unexpected)
      + "".join(f"\n  - shape of {m}" for m in mismatched)
    )
  target.update({k: np.asarray(v) for k, v in source.items()})
  return {**tree, tower: traverse_util.unflatten_dict(target, sep="/")}


def classifier_variables(workdir: str, task: str) -> dict:
  """The variables ({"params"[, "batch_stats"]}) of a classifier's latest checkpoint."""
  restored = restore_model(workdir, "latest")
  if restored.config.task != task:
    raise TransferError(
      f"{workdir} holds a {restored.config.task!r} model, not an "
      f"{task!r}: point config.init at the {task}'s workdir."
    )
  return restored.variables


def init_from_classifiers(state, init: ml_collections.ConfigDict):
  """CLIP's train state with the towers of the classifiers named in config.init replaced."""
  for task, tower in CLIP_TOWERS.items():
    workdir = init[f"{task}_workdir"]
    if not workdir:
      continue
    classifier = classifier_variables(workdir, task)
    origin = f"the {task} in {workdir}"
    state = state.replace(
      params=graft(state.params, tower, classifier["params"]["encoder"], origin)
    )
    if "batch_stats" in classifier:
      state = state.replace(
        batch_stats=graft(state.batch_stats, tower, classifier["batch_stats"]["encoder"], origin)
      )
  return state


def init_from_pretrained_text(state, name_or_folder: str, config: ml_collections.ConfigDict):
  """CLIP's train state with the text tower (all but its projection) read from a Hugging Face
  BERT-family folder, or a packaged one such as "minilm_l6" (jclip/models/pretrained.py), after
  checking that it is the architecture `config.model.text` builds."""
  folder = hf_text_folder(name_or_folder)
  _, encoder = load_hf_text_encoder(folder, text_architecture(config))
  return state.replace(
    params=graft(state.params, "text_encoder", encoder, f"the text encoder in {folder}")
  )


def init_from_pretrained_image(state, name_or_path: str, image_config: ml_collections.ConfigDict):
  """The train state with the image tower's backbone (its parameters and BatchNorm statistics) read
  from EfficientNet-Lite weights: "efficientnet_lite0", or a state-dict file of
  `image_config.variant`."""
  _, backbone = load_image_backbone(name_or_path, image_config.variant)
  tower = "encoder" if "encoder" in state.params else "image_encoder"  # a classifier, or CLIP
  origin = f"the EfficientNet-{image_config.variant} weights {name_or_path!r}"
  params = graft(state.params, tower, {"backbone": backbone["params"]}, origin)
  batch_stats = graft(state.batch_stats, tower, {"backbone": backbone["batch_stats"]}, origin)
  return state.replace(params=params, batch_stats=batch_stats)


def init_towers(state, config: ml_collections.ConfigDict):
  """Applies config.init (its fields all None: the fresh initialisation stays)."""
  init = config.init
  state = init_from_classifiers(state, init)
  if init.text_pretrained:
    state = init_from_pretrained_text(state, init.text_pretrained, config)
  if init.image_pretrained:
    state = init_from_pretrained_image(state, init.image_pretrained, config.model.image)
  return state
