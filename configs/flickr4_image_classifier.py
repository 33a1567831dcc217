"""Step 1 of the course path: the CNN image tower as a 4-class classifier (ball, bike, dog, water).

  python train.py --config=configs/flickr4_image_classifier.py --config.data.root=<flickr8k_4cat> --workdir=/tmp/f4_img
  python eval.py --workdir=/tmp/f4_img      # accuracy, macro P/R/F1, confusion matrix PNG

Same tower, data and tokenizer as configs/flickr4_clip.py, so CLIP can start from its backbone.
"""

import ml_collections

from configs import flickr4_clip
from jclip.config.defaults import evaluator


def get_config() -> ml_collections.ConfigDict:
  config = flickr4_clip.get_config()
  config.task = "image_classifier"
  config.model.num_classes = 4
  config.evals = ml_collections.ConfigDict(dict(val=evaluator("classification")))
  config.best_metric = "val/top1"
  return config
