"""EfficientNet-Lite (Tan & Le 2019; the "Lite" edge variants of the TensorFlow TPU repository), in
Flax linen, laid out so that the ImageNet weights of the PyTorch port load one tensor per parameter
(jclip/models/efficientnet_weights.py).

Lite differs from EfficientNet-B0..B7 where mobile accelerators struggle: no squeeze-excitation,
ReLU6 instead of swish, and the stem (32 channels) and head (1280 channels, and the first and last
stage's repeats) are not scaled with the family's width and depth coefficients.

Layout of Lite0 at 224 px (each stage is `repeats` MBConv blocks; only the first block of a stage
strides or changes width):

    stem      3x3 conv, stride 2, BN, ReLU6                    [B, 112, 112, 32]
    stage 1   k3, expand 1, 1 block                            [B, 112, 112, 16]
    stage 2   k3, expand 6, 2 blocks, stride 2                 [B, 56, 56, 24]
    stage 3   k5, expand 6, 2 blocks, stride 2                 [B, 28, 28, 40]
    stage 4   k3, expand 6, 3 blocks, stride 2                 [B, 14, 14, 80]
    stage 5   k5, expand 6, 3 blocks                           [B, 14, 14, 112]
    stage 6   k5, expand 6, 4 blocks, stride 2                 [B, 7, 7, 192]
    stage 7   k3, expand 6, 1 block                            [B, 7, 7, 320]
    head      1x1 conv, BN, ReLU6                              [B, 7, 7, 1280]
    pool      mean over H, W                                   [B, 1280]   (the features)
    classify  dense                                            [B, 1000]   (num_classes set)

An MBConv block: 1x1 "expand" conv to expand x width (skipped when expand is 1), BN, ReLU6; k x k
depthwise conv, BN, ReLU6; 1x1 "project" conv back down, BN (no activation); plus the input when the
block keeps stride 1 and width. Every convolution has TensorFlow's SAME padding (the extra row and
column of an even input go after, not before: XLA's "SAME" is the same rule), no bias, and BatchNorm
with epsilon 1e-3. The network reads pixels p in 0..255 as (p - 127) / 128; the tower takes images
normalised as jclip's pipeline does (jclip/pixels.py) and converts them first.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax.numpy as jnp

from jclip import pixels
from jclip.models.conv import DepthwiseConv, PointwiseConv
from jclip.models.remat import rematerialised

# How the network was trained to read pixels p in 0..255: (p - INPUT_MEAN) / INPUT_STD.
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
STEM_WIDTH = 32
HEAD_WIDTH = 1280
WIDTH_DIVISOR = 8
# Five stride-2 layers: below 32 px the last stages see a single pixel padded with zeros.
MIN_RESOLUTION = 32


def _batch_norm(train: bool, dtype):
  """BatchNorm with the PyTorch port's momentum and epsilon: running statistics in evaluation."""
  return functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    dtype=dtype,
  )


@dataclasses.dataclass(frozen=True)
class Stage:
  repeats: int
  kernel: int
  stride: int
  expand: int
  width: int


# The B0-sized base network that the coefficients scale.
BASE_STAGES = (
  Stage(1, 3, 1, 1, 16),
  Stage(2, 3, 2, 6, 24),
  Stage(2, 5, 2, 6, 40),
  Stage(3, 3, 2, 6, 80),
  Stage(3, 5, 1, 6, 112),
  Stage(4, 5, 2, 6, 192),
  Stage(1, 3, 1, 6, 320),
)


@dataclasses.dataclass(frozen=True)
class Variant:
  width_coefficient: float
  depth_coefficient: float
  resolution: int  # the size the variant was trained at


VARIANTS = {
  "lite0": Variant(1.0, 1.0, 224),
  "lite1": Variant(1.0, 1.1, 240),
  "lite2": Variant(1.1, 1.2, 260),
  "lite3": Variant(1.2, 1.4, 280),
  "lite4": Variant(1.4, 1.8, 300),
}


def _round_width(width: int, coefficient: float) -> int:
  """width x coefficient, rounded to a multiple of 8 but never down by more than 10%."""
  scaled = width * coefficient
  rounded = max(WIDTH_DIVISOR, int(scaled + WIDTH_DIVISOR / 2) // WIDTH_DIVISOR * WIDTH_DIVISOR)
  return rounded + WIDTH_DIVISOR if rounded < 0.9 * scaled else rounded


def stages_of(variant: str) -> tuple[Stage, ...]:
  """The stages of a variant: widths and repeats scaled, but not the first and last repeats."""
  if variant not in VARIANTS:
    raise ValueError(
      f"Unknown EfficientNet-Lite variant {variant!r}: choose one of {sorted(VARIANTS)}."
    )
  v = VARIANTS[variant]
  last = len(BASE_STAGES) - 1
  return tuple(
    dataclasses.replace(
      stage,
      width=_round_width(stage.width, v.width_coefficient),
      repeats=stage.repeats if i in (0, last) else math.ceil(stage.repeats * v.depth_coefficient),
    )
    for i, stage in enumerate(BASE_STAGES)
  )


def relu6(x):
  return jnp.minimum(nn.relu(x), 6.0)


class MBConv(nn.Module):
  """The inverted-residual block described in the module docstring."""

  in_width: int
  stage: Stage
  stride: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWF, train: bool):
    norm = _batch_norm(train, self.dtype)
    hidden = self.in_width * self.stage.expand
    y = x_BHWF
    if self.stage.expand != 1:
      y = relu6(norm(name="expand_bn")(PointwiseConv(hidden, self.dtype, name="expand_conv")(y)))
    k = self.stage.kernel
    y = DepthwiseConv(k, self.stride, self.dtype, name="depthwise_conv")(y)
    y = relu6(norm(name="depthwise_bn")(y))
    y = norm(name="project_bn")(PointwiseConv(self.stage.width, self.dtype, name="project_conv")(y))
    if self.stride == 1 and self.in_width == self.stage.width:
      y = y + x_BHWF
    return y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite: pooled features [B, 1280], or logits [B, num_classes] when num_classes is
  set (the ImageNet classifier, for checking the weights).

  Attributes:
    variant: "lite0" ... "lite4" (VARIANTS).
    num_classes: None for the pooled features (a backbone), else the classifier's outputs.
    dtype: computation dtype (parameters and batch statistics stay float32).
    remat: recompute each MBConv block's activations in the backward pass instead of keeping
      them (jclip/models/remat.py).
  """

  variant: str = "lite0"
  num_classes: int | None = None
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, images_BHW3, train: bool = False):
    """images_BHW3: float, normalised as jclip.pixels.normalize_images does."""
    # The pipeline's (p/255 - mean) / std, rewritten as the network's (p - 127) / 128: one affine
    # map per channel.
    scale_1113 = (pixels.IMAGE_STD * 255.0 / INPUT_STD).reshape(1, 1, 1, 3)
    shift_1113 = ((pixels.IMAGE_MEAN * 255.0 - INPUT_MEAN) / INPUT_STD).reshape(1, 1, 1, 3)
    x = (images_BHW3.astype(jnp.float32) * scale_1113 + shift_1113).astype(self.dtype)

    norm = _batch_norm(train, self.dtype)
    x = nn.Conv(
      STEM_WIDTH,
      (3, 3),
      strides=2,
      padding="SAME",
      use_bias=False,
      dtype=self.dtype,
      name="stem_conv",
    )(x)
    x = relu6(norm(name="stem_bn")(x))
    width, index = STEM_WIDTH, 0
    mbconv_block = rematerialised(MBConv, self.remat, train_argnum=2)
    for stage in stages_of(self.variant):
      for repeat in range(stage.repeats):
        x = mbconv_block(
          width, stage, stage.stride if repeat == 0 else 1, self.dtype, name=f"block{index}"
        )(x, train)
        width, index = stage.width, index + 1
    x = PointwiseConv(HEAD_WIDTH, self.dtype, name="head_conv")(x)
    x = relu6(norm(name="head_bn")(x))
    features_BF = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.num_classes is None:
      return features_BF
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(features_BF)
