"""Flax linen models: image towers, text towers and the two-tower CLIP."""

from jclip.models.clip import CLIP, build_clip
from jclip.models.cnn import CNN
from jclip.models.text import TEXT_PRESETS, TextTransformer

__all__ = ["CLIP", "CNN", "TEXT_PRESETS", "TextTransformer", "build_clip"]
