"""The image tower: a residual CNN with a linear projection head.

Layout (the shapes for a 64x64 input, widths (32, 64, 128, 256)):

    image  [B, 64, 64, 3]
    stem   conv3x3/2 -> norm -> relu              [B, 32, 32, 32]
    stage1 blocks at width 32 (stride 1)          [B, 32, 32, 32]
    stage2 blocks at width 64, first has stride 2 [B, 16, 16, 64]
    ...
    pool   mean over H, W                         [B, 256]
    proj   dense, no activation                   [B, embed_dim]

Normalisation is chosen by config: "group" (GroupNorm; no batch statistics, so nothing leaks between
the examples of a contrastive batch and nothing needs syncing across devices), "batch" (BatchNorm with
running statistics in the `batch_stats` collection) or "none".
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("group", "batch", "none")


GROUPS = 8  # GroupNorm groups; every width must be a multiple of it (the config check says so).


def _norm_layer(kind: str, train: bool, dtype, name: str, zero_scale: bool = False):
  """The normalisation layer named by `kind`; `zero_scale` starts its scale at 0."""
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  if kind == "group":
    return nn.GroupNorm(num_groups=GROUPS, scale_init=scale_init, dtype=dtype, name=name)
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, scale_init=scale_init,
                        dtype=dtype, name=name)
  if kind == "none":
    return lambda x: x
  raise ValueError(f"Unknown norm {kind!r}: choose one of {NORMS}.")


class ResidualBlock(nn.Module):
  """Two 3x3 convolutions with a skip connection (the ResNet 'basic block')."""

  width: int
  stride: int
  norm: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC, train: bool):
    conv = functools.partial(nn.Conv, use_bias=self.norm == "none", dtype=self.dtype)
    y = conv(self.width, (3, 3), strides=self.stride, name="conv1")(x_BHWC)
    y = nn.relu(_norm_layer(self.norm, train, self.dtype, "norm1")(y))
    y = conv(self.width, (3, 3), name="conv2")(y)
    # Zero-initialised last norm scale: each block starts as the identity, which trains deep
    # stacks stably (Goyal et al. 2017).
    residual = _norm_layer(self.norm, train, self.dtype, "norm2", zero_scale=True)(y)
    shortcut = x_BHWC
    if self.stride != 1 or x_BHWC.shape[-1] != self.width:
      shortcut = conv(self.width, (1, 1), strides=self.stride, name="shortcut")(x_BHWC)
      shortcut = _norm_layer(self.norm, train, self.dtype, "shortcut_norm")(shortcut)
    return nn.relu(shortcut + residual)


class CNN(nn.Module):
  """Residual CNN image encoder ending in a linear projection to `embed_dim` (no activation).

  Attributes:
    widths: channels of each stage; stage i > 0 halves the resolution in its first block.
    depths: residual blocks per stage (same length as `widths`).
    embed_dim: size of the output embedding.
    norm: "group", "batch" or "none".
    stem_stride: stride of the first 3x3 convolution (2 halves the input at once; 1 keeps it).
    dtype: computation dtype of the convolutions (the parameters stay float32).
  """

  widths: Sequence[int] = (32, 64, 128, 256)
  depths: Sequence[int] = (1, 1, 1, 1)
  embed_dim: int = 256
  norm: str = "group"
  stem_stride: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC, train: bool = False):
    """Maps float images [B, H, W, 3] (already normalised) to features [B, embed_dim]."""
    x = images_BHWC.astype(self.dtype)
    x = nn.Conv(self.widths[0], (3, 3), strides=self.stem_stride, use_bias=self.norm == "none",
                dtype=self.dtype, name="stem")(x)
    x = nn.relu(_norm_layer(self.norm, train, self.dtype, "stem_norm")(x))
    for stage, (width, depth) in enumerate(zip(self.widths, self.depths)):
      for block in range(depth):
        stride = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(width, stride, self.norm, self.dtype,
                          name=f"stage{stage + 1}_block{block + 1}")(x, train)
    pooled_BC = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.embed_dim, dtype=self.dtype, name="proj")(pooled_BC)
