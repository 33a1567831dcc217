"""Images per second of a locked image backbone's feature extraction: what the LiT configs compute
once per image and view before training (jclip/runs/feature_cache.py), each batch on every local
device.

  python bench/lit_features.py --config=configs/flickr8k_lit.py [--images=512] [--batch_size=64]

Runs the backbone of config.model.image (EfficientNet-Lite at config.data.image_size) in the
feature cache's own way (locked_backbone, apply_in_batches) on random images with constant
weights: the time depends on neither (and initialising the network would take longer to compile
than the network itself). Decoding and cropping the photographs, which the first run of a LiT
config also does, is not counted.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jclip.batching import apply_in_batches
from jclip.cli import quiet_library_logs
from jclip.config.defaults import complete
from jclip.models.efficientnet import EfficientNetLite
from jclip.pixels import normalize_images
from jclip.runs.feature_cache import locked_backbone

# Configs build on each other (`from configs import flickr8k`): the repository root must be
# importable, as it is for train.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config with an EfficientNet tower.")
_IMAGES = flags.DEFINE_integer("images", 512, "Timed images, after one warm-up batch.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per batch (the feature cache's).")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  quiet_library_logs()
  config = complete(_CONFIG.value)
  size, batch_size = config.data.image_size, _BATCH_SIZE.value
  backbone_model = EfficientNetLite(config.model.image.variant, dtype=jnp.dtype(config.model.dtype))
  shapes = jax.eval_shape(backbone_model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  weights = jax.tree.map(lambda shape: np.full(shape.shape, 0.01, shape.dtype), shapes)
  # Where a CLIP's variables hold the backbone (what locked_backbone reads).
  variables = {name: {"image_encoder": {"backbone": tree}} for name, tree in weights.items()}
  backbone, _ = locked_backbone(config, variables)
  rng = np.random.default_rng(0)
  images_NHW3 = rng.integers(0, 256, size=(_IMAGES.value, size, size, 3), dtype=np.uint8)
  apply_in_batches(backbone, images_NHW3[:batch_size], batch_size, prepare=normalize_images)
  start = time.perf_counter()
  features_NF = apply_in_batches(backbone, images_NHW3, batch_size, prepare=normalize_images)
  seconds = time.perf_counter() - start
  device = jax.local_devices()[0]
  print(
    f"LiT features: {config.model.image.variant} at {size} px in {config.model.dtype}, "
    f"{len(features_NF)} images in batches of {batch_size} on {jax.local_device_count()} x "
    f"{device.platform} ({device.device_kind}): {len(features_NF) / seconds:.1f} images/s"
  )


if __name__ == "__main__":
  app.run(main)
