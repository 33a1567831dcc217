"""CLIP: an image tower and a text tower projecting into one L2-normalised space, plus a learnable
temperature.

The temperature is stored as its log-inverse `t`, so that the logit multiplier `exp(t)` stays
positive and the optimiser moves it on a log scale: t starts at ln(1/0.07) and `exp(t)` is clamped
to at most 100 (Radford et al. 2021), beyond which a few pairs dominate the softmax and training
destabilises.

Trained with the sigmoid loss (SigLIP, Zhai et al. 2023; jclip.losses.siglip_loss) the model also
learns a bias added to every logit, which the paper starts at -10 with t at ln 10 (a temperature of
0.1): at first every pair is scored as "no match", the right guess for all but N of the N² pairs.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from jclip.models.heads import project

NORM_EPS = 1e-6
SIGLIP_INIT_LOGIT_BIAS = -10.0  # the paper's


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
      "log_logit_scale", nn.initializers.constant(math.log(1.0 / self.init_temperature)), ()
    )
    if self.init_logit_bias is not None:
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.init_logit_bias), ())

  def encode_image(self, images_BHW3=None, train: bool = False, *, image_features_BF=None):
    """Unit embeddings [B, D] of images, or, given `image_features_BF`, of a locked backbone's
    cached features (only the projection runs)."""
    if image_features_BF is not None:
      return l2_normalize(self.image_encoder(features_BF=image_features_BF))
    return l2_normalize(self.image_encoder(images_BHW3, train))

  def encode_text(self, tokens_BL=None, train: bool = False, *, text_features_BF=None):
    """Unit embeddings [B, D] of token ids, or, given `text_features_BF`, of a locked text tower's
    cached pooled features (only the projection runs)."""
    if text_features_BF is not None:
      return l2_normalize(self.text_encoder(pooled_BF=text_features_BF))
    return l2_normalize(self.text_encoder(tokens_BL, train))

  def logit_scale(self):
    """exp(t) clamped to max_logit_scale. The clamp stops t's gradient beyond it, so training also
    clamps t itself after each update (jclip/training/step.py): a t at the clamp can come back."""
    return jnp.exp(jnp.minimum(self.log_logit_scale, math.log(self.max_logit_scale)))

  def __call__(
    self, image=None, tokens=None, *, image_features=None, text_features=None, train: bool = False
  ):
    """The batch fields by name (jclip.tasks.model_inputs says which): each tower's input (image
    [B, H, W, 3], tokens [B * K, L]) or its cached features ([B, F]). Returns (image_emb [B, D],
    text_emb [B * K, D], logit_scale []), and logit_bias [] after them when the model has one: the
    arguments of clip_loss, or of siglip_loss."""
    outputs = (
      self.encode_image(image, train, image_features_BF=image_features),
      self.encode_text(tokens, train, text_features_BF=text_features),
      self.logit_scale(),
    )
    return outputs if self.init_logit_bias is None else (*outputs, self.logit_bias)


class BackboneTower(nn.Module):
  """An image backbone (EfficientNet-Lite) plus a new linear projection "proj" into the shared
  space.

  Takes images [B, H, W, 3], or, by name, the backbone's own pooled features [B, F]: a locked
  backbone's features can be computed once and cached (jclip/runs/feature_cache.py), and training
  then runs only the projection. `locked` keeps the backbone's BatchNorm on its running statistics
  while training (a locked tower must compute the same features in training as in evaluation).
  """

  backbone: nn.Module
  embed_dim: int | None
  locked: bool = False
  head_dim: int | None = None  # the projection's hidden width (jclip/models/heads.py); None: linear
  head_dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images_BHW3=None, train: bool = False, *, features_BF=None):
    if features_BF is None:
      features_BF = self.backbone(images_BHW3, train and not self.locked)
    if self.embed_dim is None:
      return features_BF
    return project(features_BF, self.embed_dim, self.head_dim, self.head_dropout, self.dtype, train)
