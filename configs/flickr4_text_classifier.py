"""Step 2 of the course path: the text transformer (no CLS token: padding-masked mean pooling) as a
4-class caption classifier; every caption is labelled with its image's class.

  python train.py --config=configs/flickr4_text_classifier.py --config.data.root=<flickr8k_4cat> --workdir=/tmp/f4_txt
  python eval.py --workdir=/tmp/f4_txt
"""

import ml_collections

from configs import flickr4_image_classifier


def get_config() -> ml_collections.ConfigDict:
  config = flickr4_image_classifier.get_config()
  config.task = "text_classifier"
  return config
