"""Step 5 of the course path (optional): CLIP on the 4-class Flickr subset with the pretrained
MiniLM text tower and its WordPiece tokenizer in place of the small transformer, frozen or
fine-tuned (see configs/flickr8k_minilm.py for the modes).

  python train.py --config=configs/flickr4_clip_minilm.py:frozen --config.data.root=<flickr8k_4cat> \\
      --config.init.image_classifier_workdir=/tmp/f4_img --workdir=/tmp/f4_clip_minilm

The image tower can still start from the course's image classifier; the text classifier cannot
be used (its tokenizer is not MiniLM's).
"""

import ml_collections

from configs import flickr4_clip, flickr8k_minilm


def get_config(mode: str = "frozen") -> ml_collections.ConfigDict:
  return flickr8k_minilm.use_pretrained_text(flickr4_clip.get_config(), mode)
