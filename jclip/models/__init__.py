"""Flax linen models: image towers, text towers, the two-tower CLIP and classifier heads.

Nothing here reads a config, a file or a flag: jclip.tasks builds these modules from a config.
"""

from jclip.models.clip import CLIP
from jclip.models.cnn import CNN
from jclip.models.text import TEXT_PRESETS, TextTransformer

# The image towers that jclip.tasks.build_image_encoder builds (config.model.image.tower).
IMAGE_TOWERS = ("cnn", "efficientnet_lite")

__all__ = ["CLIP", "CNN", "IMAGE_TOWERS", "TEXT_PRESETS", "TextTransformer"]
