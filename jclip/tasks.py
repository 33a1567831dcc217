"""What is trained: CLIP, or one tower as a classifier (the course path's first step).

A task says which model `config.model` builds, which batch fields feed it, and which loss scores
its outputs; the train loop, checkpoints and input pipeline are the same for every task.

    clip              images + tokens -> (image_emb, text_emb, logit_scale) -> clip_loss
      loss="siglip"   images + tokens -> (image_emb, text_emb, logit_scale, logit_bias)
                                                                             -> siglip_loss
    image_classifier  images          -> logits [B, num_classes]           -> cross-entropy
    text_classifier   tokens          -> logits [B, num_classes]           -> cross-entropy

A text classifier learns from every caption of an image, labelled with that image's class.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from jclip.errors import UserError
from jclip.losses import LOSSES, classification_loss, clip_loss, siglip_loss
from jclip.models.classifier import Classifier
from jclip.models.clip import build_clip, build_image_encoder, build_text_encoder


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  build_model: Callable[[ml_collections.ConfigDict], nn.Module]  # from config.model
  input_fields: tuple[str, ...]  # the batch fields passed to the model, in order
  loss: Callable  # (model outputs, batch, axis_name) -> (share, metrics)
  needs_labels: bool


def _example_field(name: str, config: ml_collections.ConfigDict):
  size = config.data.image_size
  return {"image": jnp.zeros((1, size, size, 3), jnp.float32),
          "tokens": jnp.zeros((1, config.data.max_text_len), jnp.int32)}[name]


def example_inputs(task: Task, config: ml_collections.ConfigDict) -> tuple:
  """Dummy model inputs with the shapes training will use (for init)."""
  return tuple(_example_field(name, config) for name in task.input_fields)


TASKS = {
    "clip": Task(
        "clip", build_clip, ("image", "tokens"),
        lambda out, batch, axis: clip_loss(*out, axis_name=axis), needs_labels=False),
    "image_classifier": Task(
        "image_classifier",
        lambda model: Classifier(build_image_encoder(model, None), model.num_classes), ("image",),
        lambda logits, batch, axis: classification_loss(logits, batch["label"], axis),
        needs_labels=True),
    "text_classifier": Task(
        "text_classifier",
        lambda model: Classifier(build_text_encoder(model, None), model.num_classes), ("tokens",),
        lambda logits, batch, axis: classification_loss(logits, batch["label"], axis),
        needs_labels=True),
}


# config.loss of task "clip" (LOSSES): CLIP's softmax loss, or SigLIP's sigmoid loss, whose model
# has a bias.
SIGLIP = Task(
    "clip", functools.partial(build_clip, logit_bias=True), ("image", "tokens"),
    lambda out, batch, axis: siglip_loss(*out, axis_name=axis), needs_labels=False)


def get_task(config: ml_collections.ConfigDict) -> Task:
  name, loss = config.get("task", "clip"), config.get("loss", "clip")
  if name not in TASKS:
    raise UserError(f"config.task={name!r} is unknown: choose one of {sorted(TASKS)}.")
  if loss not in LOSSES:
    raise UserError(f"config.loss={loss!r} is unknown: choose one of {LOSSES}.")
  return SIGLIP if name == "clip" and loss == "siglip" else TASKS[name]
