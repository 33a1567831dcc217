"""Convolutions written as the operations that XLA's CPU backend runs fast: a 1x1 convolution as
the matmul it is, a depthwise convolution as a sum of shifted slices. EfficientNet-Lite
(jclip/models/efficientnet.py) and the CNN's inverted blocks (jclip/models/cnn.py) are built from
them; `python bench/conv_shapes.py` measures the gap.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class PointwiseConv(nn.Module):
  """A 1x1 convolution (kernel [1, 1, in, out], nn.Conv's layout), no bias, computed as the matmul
  it is: on XLA's CPU backend 1.7x faster over the whole network than nn.Conv's convolution."""

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWF):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (1, 1, x_BHWF.shape[-1], self.features)
    )
    # One [B*H*W, C] x [C, D] matmul: XLA's CPU backend runs the 4-D einsum it equals (and its
    # gradients, which contract over B, H and W) up to 2.8x slower (bench/conv_shapes.py).
    x_PC = x_BHWF.reshape(-1, x_BHWF.shape[-1])
    y_PD = x_PC @ kernel[0, 0].astype(self.dtype)
    return y_PD.reshape(*x_BHWF.shape[:-1], self.features)


class DepthwiseConv(nn.Module):
  """A k x k convolution of each channel with its own kernel (kernel [k, k, 1, C], the layout of
  nn.Conv with feature_group_count=C), TensorFlow SAME padding, no bias.

  Computed as the sum of k*k shifted, strided slices of the padded input, each times one row of
  the kernel: on XLA's CPU backend that runs 3-14x faster than the grouped convolution it equals
  (`python bench/conv_shapes.py`), and EfficientNet spends most of its time here.
  """

  kernel_size: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWF):
    k, s = self.kernel_size, self.stride
    channels = x_BHWF.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, channels))
    kernel = kernel.astype(self.dtype)
    height, width = x_BHWF.shape[1:3]
    out_h, out_w = -(-height // s), -(-width // s)
    pad_h = max((out_h - 1) * s + k - height, 0)
    pad_w = max((out_w - 1) * s + k - width, 0)
    # SAME: the odd pixel of padding goes after, as in TensorFlow (and XLA's "SAME").
    x = jnp.pad(
      x_BHWF, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    out = None
    for i in range(k):
      for j in range(k):
        tap = (
          x[:, i : i + (out_h - 1) * s + 1 : s, j : j + (out_w - 1) * s + 1 : s, :]
          * kernel[i, j][None, None]  # [1, 1, 1, F]
        )
        out = tap if out is None else out + tap
    return out


class FlatDense(nn.Dense):
  """nn.Dense (the same parameters) over the last axis of an input of any rank, computed on the
  input flattened to [rows, features]: on XLA's CPU backend the kernel's gradient of a Dense on a
  [B, L, F] or [B, H, W, F] input, a contraction over every leading axis, runs up to 2.9x slower."""

  def __call__(self, inputs):
    outputs = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return outputs.reshape(*inputs.shape[:-1], outputs.shape[-1])
