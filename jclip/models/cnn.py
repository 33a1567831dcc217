"""The image tower: a CNN of residual or inverted blocks with a linear projection head.

Layout (the shapes for a 64x64 input, widths (128, 256), stem="patch", stem_stride=8):

    image  [B, 64, 64, 3]
    stem   8x8 patches -> dense -> norm -> relu    [B, 8, 8, 128]
    stage1 blocks at width 128 (stride 1)          [B, 8, 8, 128]
    stage2 blocks at width 256, first has stride 2 [B, 4, 4, 256]
    pool   mean over H, W                          [B, 256]
    proj   dense, no activation                    [B, embed_dim]

The stem is either "conv" (a 3x3 convolution with stride `stem_stride`) or "patch" (non-overlapping
stem_stride x stem_stride patches, each linearly embedded: a convolution whose kernel equals its
stride, computed as one matmul). On XLA's CPU backend a 3x3 convolution (forward + backward, batch
128) runs at 6 GFLOP/s on a 32x32 map with 32 channels but at 63-70 GFLOP/s on an 8x8 map with
128-256 channels, against 111 GFLOP/s for a 2048x2048 matmul (`python bench/conv_shapes.py`,
2026-11-27), so the patch stem, which reaches a small, wide map at once, trains several times faster
on a CPU.

The blocks are either "residual" (ResidualBlock: two 3x3 convolutions of C x C channels, the
ResNet basic block; a stage opens with a stride-2 block) or "inverted" (InvertedBlock, ConvNeXt's
layout: a depthwise convolution, then a 1x1 expansion and projection; a stage opens with a 2x2
patch merge, Downsample). The inverted block is built from jclip/models/conv.py's operations, which
XLA's CPU backend runs near its matmul rate, and costs 8 C^2 multiply-adds per pixel (expand 4)
where the residual block costs 18 C^2.

Normalisation is chosen by config: "group" (GroupNorm; no batch statistics, so nothing leaks between
the examples of a contrastive batch and nothing needs syncing across devices), "batch" (BatchNorm
with running statistics in the `batch_stats` collection) or "none".
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import einops
import flax.linen as nn
import jax.numpy as jnp

from jclip.models.conv import DepthwiseConv, FlatDense, PointwiseConv
from jclip.models.heads import project
from jclip.models.remat import rematerialised

NORMS = ("group", "batch", "none")
STEMS = ("conv", "patch")
BLOCKS = ("residual", "inverted")


GROUPS = 8  # GroupNorm groups; every width must be a multiple of it (the config check says so).


def _norm_layer(kind: str, train: bool, dtype, name: str, zero_scale: bool = False):
  """The normalisation layer named by `kind`; `zero_scale` starts its scale at 0."""
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  if kind == "group":
    return nn.GroupNorm(num_groups=GROUPS, scale_init=scale_init, dtype=dtype, name=name)
  if kind == "batch":
    return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, scale_init=scale_init, dtype=dtype, name=name
    )
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
  def __call__(self, x_BHWF, train: bool):
    conv = functools.partial(nn.Conv, use_bias=self.norm == "none", dtype=self.dtype)
    y = conv(self.width, (3, 3), strides=self.stride, name="conv1")(x_BHWF)
    y = nn.relu(_norm_layer(self.norm, train, self.dtype, "norm1")(y))
    y = conv(self.width, (3, 3), name="conv2")(y)
    # Zero-initialised last norm scale: each block starts as the identity, which trains deep
    # stacks stably (Goyal et al. 2017).
    residual = _norm_layer(self.norm, train, self.dtype, "norm2", zero_scale=True)(y)
    shortcut = x_BHWF
    if self.stride != 1 or x_BHWF.shape[-1] != self.width:
      shortcut = conv(self.width, (1, 1), strides=self.stride, name="shortcut")(x_BHWF)
      shortcut = _norm_layer(self.norm, train, self.dtype, "shortcut_norm")(shortcut)
    return nn.relu(shortcut + residual)


class InvertedBlock(nn.Module):
  """A ConvNeXt-style inverted block built from what XLA's CPU backend runs fast (jclip/models/
  conv.py): a k x k depthwise convolution as shifted slices, a norm, then a 1x1 expansion to
  `expand` x width, GELU, and a 1x1 projection back, both matmuls; plus the input. Its FLOPs sit
  in the two matmuls, where the residual block's sit in 3x3 convolutions of C x C channels."""

  width: int
  kernel_size: int
  expand: int
  norm: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWF, train: bool):
    y = DepthwiseConv(self.kernel_size, dtype=self.dtype, name="depthwise")(x_BHWF)
    y = _norm_layer(self.norm, train, self.dtype, "norm1")(y)
    y = nn.gelu(PointwiseConv(self.width * self.expand, self.dtype, name="expand")(y))
    y = PointwiseConv(self.width, self.dtype, name="project")(y)
    # Zero-initialised scale, as in ResidualBlock: the block starts as the identity.
    return x_BHWF + _norm_layer(self.norm, train, self.dtype, "norm2", zero_scale=True)(y)


class Downsample(nn.Module):
  """Between the stages of inverted blocks: each 2x2 patch of the map to one pixel of `width`
  channels (a matmul over its 4 x C values), then a norm."""

  width: int
  norm: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWF, train: bool):
    x = einops.rearrange(x_BHWF, "b (h p) (w q) c -> b h w (p q c)", p=2, q=2)
    x = PointwiseConv(self.width, self.dtype, name="merge")(x)
    return _norm_layer(self.norm, train, self.dtype, "norm")(x)


class CNN(nn.Module):
  """CNN image encoder (residual or inverted blocks) ending in a linear projection to `embed_dim`
  (no activation).

  Attributes:
    widths: channels of each stage; stage i > 0 halves the resolution in its first block.
    depths: residual blocks per stage (same length as `widths`).
    embed_dim: size of the output embedding; None returns the pooled features (a backbone).
    norm: "group", "batch" or "none".
    stem: "conv" (3x3 convolution) or "patch" (linear embedding of non-overlapping patches).
    stem_stride: the stem's stride (for "patch", also its patch size).
    block: "residual" (two 3x3 convolutions, ResidualBlock) or "inverted" (InvertedBlock, with a
      2x2 patch merge, Downsample, opening every stage after the first).
    depthwise_kernel, expand: the inverted block's depthwise kernel size and MLP expansion.
    dtype: computation dtype of the convolutions (the parameters stay float32).
    remat: recompute each block's activations in the backward pass instead of keeping
      them (jclip/models/remat.py).
  """

  widths: Sequence[int] = (32, 64, 128, 256)
  depths: Sequence[int] = (1, 1, 1, 1)
  embed_dim: int | None = 256
  norm: str = "group"
  stem: str = "conv"
  stem_stride: int = 2
  block: str = "residual"
  depthwise_kernel: int = 5
  expand: int = 4
  head_dim: int | None = None  # the projection's hidden width (jclip/models/heads.py); None: linear
  head_dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, images_BHW3, train: bool = False):
    """Float images [B, H, W, 3] (already normalised) -> [B, embed_dim] (or [B, widths[-1]])."""
    x = images_BHW3.astype(self.dtype)
    if self.stem == "patch":
      x = einops.rearrange(
        x, "b (h p) (w q) c -> b h w (p q c)", p=self.stem_stride, q=self.stem_stride
      )
      x = FlatDense(self.widths[0], use_bias=self.norm == "none", dtype=self.dtype, name="stem")(x)
    elif self.stem == "conv":
      x = nn.Conv(
        self.widths[0],
        (3, 3),
        strides=self.stem_stride,
        use_bias=self.norm == "none",
        dtype=self.dtype,
        name="stem",
      )(x)
    else:
      raise ValueError(f"Unknown stem {self.stem!r}: choose one of {STEMS}.")
    x = nn.relu(_norm_layer(self.norm, train, self.dtype, "stem_norm")(x))
    if self.block == "residual":
      residual_block = rematerialised(ResidualBlock, self.remat, train_argnum=2)
      for stage, (width, depth) in enumerate(zip(self.widths, self.depths, strict=True)):
        for block in range(depth):
          stride = 2 if stage > 0 and block == 0 else 1
          x = residual_block(
            width, stride, self.norm, self.dtype, name=f"stage{stage + 1}_block{block + 1}"
          )(x, train)
    elif self.block == "inverted":
      inverted_block = rematerialised(InvertedBlock, self.remat, train_argnum=2)
      for stage, (width, depth) in enumerate(zip(self.widths, self.depths, strict=True)):
        if stage > 0:
          downsample = Downsample(width, self.norm, self.dtype, name=f"stage{stage + 1}_merge")
          x = downsample(x, train)
        for block in range(depth):
          x = inverted_block(
            width,
            self.depthwise_kernel,
            self.expand,
            self.norm,
            self.dtype,
            name=f"stage{stage + 1}_block{block + 1}",
          )(x, train)
    else:
      raise ValueError(f"Unknown block {self.block!r}: choose one of {BLOCKS}.")
    pooled_BF = jnp.mean(x, axis=(1, 2))
    if self.embed_dim is None:
      return pooled_BF
    return project(pooled_BF, self.embed_dim, self.head_dim, self.head_dropout, self.dtype, train)
