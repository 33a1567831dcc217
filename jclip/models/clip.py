"""CLIP: an image tower and a text tower projecting into one L2-normalised space, plus a learnable
temperature.

The temperature is stored as its log-inverse `t`, so that the logit multiplier `exp(t)` stays positive
and the optimiser moves it on a log scale: t starts at ln(1/0.07) and `exp(t)` is clamped to at most
100 (Radford et al. 2021), beyond which a few pairs dominate the softmax and training destabilises.

Trained with the sigmoid loss (SigLIP, Zhai et al. 2023; jclip.losses.siglip_loss) the model also
learns a bias added to every logit, which the paper starts at -10 with t at ln 10 (a temperature of
0.1): at first every pair is scored as "no match", the right guess for all but N of the N² pairs.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jclip.models.cnn import CNN
from jclip.models.efficientnet import EfficientNetLite
from jclip.models.text import TEXT_PRESETS, TextTransformer

NORM_EPS = 1e-6
SIGLIP_INIT_LOGIT_BIAS = -10.0  # the paper's; where config.model.init_logit_bias is unset


def l2_normalize(x_BD, eps: float = NORM_EPS):
  """x / ||x|| computed in float32; eps keeps an all-zero vector finite."""
  x_BD = x_BD.astype(jnp.float32)
  return x_BD * jnp.reciprocal(jnp.sqrt(jnp.sum(x_BD * x_BD, axis=-1, keepdims=True) + eps))


class CLIP(nn.Module):
  """Two towers and a temperature, plus a logit bias "logit_bias" unless `init_logit_bias` is None
  (the sigmoid loss's). `encode_image`/`encode_text` return unit vectors in float32."""

  image_encoder: nn.Module
  text_encoder: nn.Module
  init_temperature: float = 0.07
  max_logit_scale: float = 100.0
  init_logit_bias: float | None = None

  def setup(self):
    self.log_logit_scale = self.param(
        "log_logit_scale", nn.initializers.constant(math.log(1.0 / self.init_temperature)), ())
    if self.init_logit_bias is not None:
      self.logit_bias = self.param(
          "logit_bias", nn.initializers.constant(self.init_logit_bias), ())

  def encode_image(self, images_BHWC, train: bool = False):
    return l2_normalize(self.image_encoder(images_BHWC, train))

  def encode_text(self, tokens_BL, train: bool = False):
    return l2_normalize(self.text_encoder(tokens_BL, train))

  def logit_scale(self):
    """exp(t) clamped to max_logit_scale. The clamp stops t's gradient beyond it, so training also
    clamps t itself after each update (jclip/training/step.py): a t at the clamp can come back."""
    return jnp.exp(jnp.minimum(self.log_logit_scale, math.log(self.max_logit_scale)))

  def __call__(self, images_BHWC, tokens_BL, train: bool = False):
    """Returns (image_emb [B, D], text_emb [B, D], logit_scale []), and logit_bias [] after them
    when the model has one: the arguments of clip_loss, or of siglip_loss."""
    outputs = (self.encode_image(images_BHWC, train), self.encode_text(tokens_BL, train),
               self.logit_scale())
    return outputs if self.init_logit_bias is None else (*outputs, self.logit_bias)


def text_tower_kwargs(text_config: ml_collections.ConfigDict) -> dict:
  """The text tower's attributes: the preset's values, overridden by the config's non-None fields."""
  if text_config.preset not in TEXT_PRESETS:
    raise ValueError(f"config.model.text.preset={text_config.preset!r} is not a known preset; "
                     f"choose one of {sorted(TEXT_PRESETS)}.")
  kwargs = vars(TEXT_PRESETS[text_config.preset]).copy()
  for field in kwargs:
    value = text_config.get(field)
    if value is not None:
      kwargs[field] = value
  return kwargs


class BackboneTower(nn.Module):
  """An image backbone (EfficientNet-Lite) plus a new linear projection "proj" into the shared
  space.

  Takes images [B, H, W, 3], or the backbone's own pooled features [B, C]: a locked backbone's
  features can be computed once and cached (jclip/runs/feature_cache.py), and training then runs
  only the projection. `locked` keeps the backbone's BatchNorm on its running statistics while
  training (a locked tower must compute the same features in training as in evaluation).
  """

  backbone: nn.Module
  embed_dim: int | None
  locked: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images_or_features, train: bool = False):
    if images_or_features.ndim == 2:
      features_BC = images_or_features
    else:
      features_BC = self.backbone(images_or_features, train and not self.locked)
    if self.embed_dim is None:
      return features_BC
    return nn.Dense(self.embed_dim, dtype=self.dtype, name="proj")(features_BC)


IMAGE_TOWERS = ("cnn", "efficientnet_lite")


def build_image_encoder(model_config: ml_collections.ConfigDict,
                        embed_dim: int | None) -> nn.Module:
  """The image tower of `config.model.image` (`tower`: "cnn" from scratch, or "efficientnet_lite"
  for a pretrained backbone); embed_dim=None leaves out the projection (a backbone)."""
  image = model_config.image
  dtype = jnp.dtype(model_config.dtype)
  tower = image.get("tower", "cnn")
  if tower == "efficientnet_lite":
    return BackboneTower(EfficientNetLite(image.variant, dtype=dtype), embed_dim,
                         locked=image.locked, dtype=dtype)
  if tower != "cnn":
    raise ValueError(f"config.model.image.tower={tower!r}: choose one of {IMAGE_TOWERS}.")
  return CNN(widths=tuple(image.widths), depths=tuple(image.depths), embed_dim=embed_dim,
             norm=image.norm, stem=image.stem, stem_stride=image.stem_stride, dtype=dtype)


def build_text_encoder(model_config: ml_collections.ConfigDict,
                       embed_dim: int | None) -> TextTransformer:
  """The transformer of `config.model.text`; embed_dim=None leaves out the projection."""
  return TextTransformer(embed_dim=embed_dim, dtype=jnp.dtype(model_config.dtype),
                         **text_tower_kwargs(model_config.text))


def build_clip(model_config: ml_collections.ConfigDict, logit_bias: bool = False) -> CLIP:
  """Builds CLIP from `config.model` (see configs/quickstart.py for the fields); `logit_bias` adds
  the sigmoid loss's bias, starting at model.init_logit_bias (unset: SIGLIP_INIT_LOGIT_BIAS)."""
  init_logit_bias = None
  if logit_bias:
    init_logit_bias = model_config.get("init_logit_bias")
    init_logit_bias = SIGLIP_INIT_LOGIT_BIAS if init_logit_bias is None else init_logit_bias
  return CLIP(build_image_encoder(model_config, model_config.image.embed_dim),
              build_text_encoder(model_config, model_config.text.embed_dim),
              init_temperature=model_config.init_temperature,
              max_logit_scale=model_config.max_logit_scale, init_logit_bias=init_logit_bias)
