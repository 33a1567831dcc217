"""The projection of a tower's pooled features into the shared space: linear (CLIP), or a small
MLP (the two-branch networks of Wang et al. 2016, which lifted frozen-feature retrieval over linear
maps): Dense -> LayerNorm -> ReLU -> Dropout -> Dense.

Both are the parameter subtree "proj" of the tower, so every rule about a tower's projection (its
learning rate, what a locked backbone leaves training, what transfer replaces) holds for either.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class MLPHead(nn.Module):
  """pooled [B, F] -> [B, hidden_dim] -> LayerNorm, ReLU, dropout -> [B, embed_dim]. LayerNorm
  rather than Wang et al.'s BatchNorm: the same in training and evaluation, with no statistics to
  keep across devices."""

  embed_dim: int
  hidden_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled_BF, train: bool = False):
    hidden_BH = nn.Dense(self.hidden_dim, dtype=self.dtype, name="hidden")(pooled_BF)
    hidden_BH = nn.relu(nn.LayerNorm(dtype=self.dtype, name="norm")(hidden_BH))
    hidden_BH = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden_BH)
    return nn.Dense(self.embed_dim, dtype=self.dtype, name="out")(hidden_BH)


def project(pooled_BF, embed_dim: int, head_dim: int | None, dropout_rate: float, dtype, train):
  """The tower's projection "proj" of its pooled features (call it inside the tower's compact
  method): a Dense layer, or with `head_dim` an MLPHead with that hidden width."""
  if head_dim is None:
    return nn.Dense(embed_dim, dtype=dtype, name="proj")(pooled_BF)
  return MLPHead(embed_dim, head_dim, dropout_rate, dtype, name="proj")(pooled_BF, train)
