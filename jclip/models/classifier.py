"""A classifier: one of jclip's towers without its projection, plus a linear head.

This is the first step of the course path: train each tower as a classifier, then drop the head and
build CLIP from the two backbones (jclip/training/transfer.py). Parameters:

    {"encoder": <the tower's parameters, without "proj">, "head": {"kernel", "bias"}}
"""

from __future__ import annotations

import flax.linen as nn


class Classifier(nn.Module):
  """encoder(inputs) -> pooled features [B, F] -> head -> logits [B, num_classes]."""

  encoder: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, image=None, tokens=None, train: bool = False):
    """The batch field of its tower, by name: images [B, H, W, 3] or tokens [B, L]."""
    if (image is None) == (tokens is None):
      raise ValueError("A classifier reads one input: give image= or tokens=.")
    features_BF = self.encoder(tokens if image is None else image, train)
    return nn.Dense(self.num_classes, name="head")(features_BF)
