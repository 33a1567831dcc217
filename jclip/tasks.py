"""What is trained: CLIP, or one tower as a classifier (the course path's first step).

A task says which model `config.model` builds, which batch fields feed it (by name), and which loss
scores its outputs; the train loop, checkpoints and input pipeline are the same for every task.

    clip              image + tokens -> (image_emb, text_emb, logit_scale) -> clip_loss
      loss="siglip"   image + tokens -> (image_emb, text_emb, logit_scale, logit_bias)
                                                                            -> siglip_loss
    image_classifier  image          -> logits [B, C]                      -> cross-entropy
    text_classifier   tokens         -> logits [B, C]                      -> cross-entropy

A text classifier learns from every caption of an image, labelled with that image's class. A
locked tower whose features are cached (config.data.cached_views, cached_text) is fed those
features in place of its input: the field "image_features" for "image", "text_features" for
"tokens" (`model_inputs`), chosen here once, as config.loss chooses SigLIP.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from jclip.config.derived import text_architecture
from jclip.errors import UserError
from jclip.losses import LOSSES, classification_loss, clip_loss, siglip_loss
from jclip.models.classifier import Classifier
from jclip.models.clip import CLIP, SIGLIP_INIT_LOGIT_BIAS, BackboneTower
from jclip.models.cnn import CNN
from jclip.models.efficientnet import EfficientNetLite
from jclip.models.text import TextTransformer


def _head(config: ml_collections.ConfigDict) -> dict:
  """A tower's projection head (jclip/models/heads.py), as config.model says."""
  return dict(head_dim=config.model.head_dim, head_dropout=config.model.head_dropout)


def build_image_encoder(config: ml_collections.ConfigDict, embed_dim: int | None) -> nn.Module:
  """The image tower of `config.model.image` (`tower`: "cnn" from scratch, or "efficientnet_lite"
  for a pretrained backbone); embed_dim=None leaves out the projection (a backbone)."""
  image, dtype, remat = config.model.image, jnp.dtype(config.model.dtype), config.model.remat
  if image.tower == "efficientnet_lite":
    return BackboneTower(
      EfficientNetLite(image.variant, dtype=dtype, remat=remat),
      embed_dim,
      locked=image.locked,
      **_head(config),
      dtype=dtype,
    )
  return CNN(
    widths=tuple(image.widths),
    depths=tuple(image.depths),
    embed_dim=embed_dim,
    norm=image.norm,
    stem=image.stem,
    stem_stride=image.stem_stride,
    block=image.block,
    depthwise_kernel=image.depthwise_kernel,
    expand=image.expand,
    **_head(config),
    dtype=dtype,
    remat=remat,
  )


def build_text_encoder(config: ml_collections.ConfigDict, embed_dim: int | None) -> TextTransformer:
  """The transformer of `config.model.text`; embed_dim=None leaves out the projection."""
  return TextTransformer(
    embed_dim=embed_dim,
    **_head(config),
    dtype=jnp.dtype(config.model.dtype),
    remat=config.model.remat,
    **vars(text_architecture(config)),
  )


def build_clip(config: ml_collections.ConfigDict, logit_bias: bool = False) -> CLIP:
  """CLIP from `config.model`; `logit_bias` adds the sigmoid loss's bias, starting at
  model.init_logit_bias (None: SIGLIP_INIT_LOGIT_BIAS)."""
  model = config.model
  init_logit_bias = None
  if logit_bias:
    init_logit_bias = (
      SIGLIP_INIT_LOGIT_BIAS if model.init_logit_bias is None else model.init_logit_bias
    )
  return CLIP(
    build_image_encoder(config, model.embed_dim),
    build_text_encoder(config, model.embed_dim),
    init_temperature=model.init_temperature,
    max_logit_scale=model.max_logit_scale,
    init_logit_bias=init_logit_bias,
  )


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  build_model: Callable[[ml_collections.ConfigDict], nn.Module]  # from the config
  input_fields: tuple[str, ...]  # the batch fields passed to the model by name, uncached
  loss: Callable  # (model outputs, batch, axis_name) -> (share, metrics)
  needs_labels: bool


TASKS = {
  "clip": Task(
    "clip",
    build_clip,
    ("image", "tokens"),
    lambda out, batch, axis: clip_loss(*out, axis_name=axis),
    needs_labels=False,
  ),
  "image_classifier": Task(
    "image_classifier",
    lambda config: Classifier(build_image_encoder(config, None), config.model.num_classes),
    ("image",),
    lambda logits, batch, axis: classification_loss(logits, batch["label"], axis),
    needs_labels=True,
  ),
  "text_classifier": Task(
    "text_classifier",
    lambda config: Classifier(build_text_encoder(config, None), config.model.num_classes),
    ("tokens",),
    lambda logits, batch, axis: classification_loss(logits, batch["label"], axis),
    needs_labels=True,
  ),
}


# config.loss of task "clip" (LOSSES): CLIP's softmax loss, or SigLIP's sigmoid loss, whose model
# has a bias.
SIGLIP = Task(
  "clip",
  functools.partial(build_clip, logit_bias=True),
  ("image", "tokens"),
  lambda out, batch, axis: siglip_loss(*out, axis_name=axis),
  needs_labels=False,
)

# The field that carries a locked tower's cached features in place of each input field.
CACHED_FIELDS = {"image": "image_features", "tokens": "text_features"}


def get_task(config: ml_collections.ConfigDict) -> Task:
  if config.task not in TASKS:
    raise UserError(f"config.task={config.task!r} is unknown: choose one of {sorted(TASKS)}.")
  if config.loss not in LOSSES:
    raise UserError(f"config.loss={config.loss!r} is unknown: choose one of {LOSSES}.")
  return SIGLIP if config.task == "clip" and config.loss == "siglip" else TASKS[config.task]


def model_inputs(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The batch fields that the model reads in training, by name: each input field of the task,
  or the cached features of its locked tower (CACHED_FIELDS)."""
  cached = {"image": config.data.cached_views > 0, "tokens": config.data.cached_text}
  return tuple(
    CACHED_FIELDS[field] if cached[field] else field for field in get_task(config).input_fields
  )


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The model that config.task trains, built from the config."""
  return get_task(config).build_model(config)


def example_inputs(config: ml_collections.ConfigDict) -> dict:
  """Dummy uncached inputs, by name, of the shapes that training uses (for init: every
  parameter, the locked towers' too)."""
  size = config.data.image_size
  fields = {
    "image": jnp.zeros((1, size, size, 3), jnp.float32),
    "tokens": jnp.zeros((1, config.data.max_text_len), jnp.int32),
  }
  return {name: fields[name] for name in get_task(config).input_fields}


def init_variables(model: nn.Module, config: ml_collections.ConfigDict, rng) -> dict:
  """Fresh variables of `model` for inputs of the shapes that `config` trains on."""
  return model.init(rng, **example_inputs(config))


def abstract_variables(model: nn.Module, config: ml_collections.ConfigDict) -> dict:
  """The variables' structure, shapes and dtypes, without allocating or computing anything."""
  return jax.eval_shape(lambda: init_variables(model, config, jax.random.key(0)))
