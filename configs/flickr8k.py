"""CLIP from scratch on Flickr8k (6,000 train images, 5 captions each), sized for a 2-core CPU.

  python train.py --config=configs/flickr8k.py --config.data.root=/path/to/flickr8k --workdir=/tmp/f8k
  python eval.py --workdir=/tmp/f8k --split=val

The folder must hold images/ and captions.tsv (see jclip/data/folder.py); it is converted once into a
TFDS array_record dataset under config.data.tfds_dir (default ~/.cache/jclip/tfds).
"""

import ml_collections

from jclip.config.defaults import base, evaluator


def get_config() -> ml_collections.ConfigDict:
  """The recipe of docs/flickr8k_study.md: 96 px images cut into 12 px patches (the image tower's
  map stays 8x8, so 2.25x the pixels cost no time), two different captions of each image per step
  (the multi-caption loss), and a 1-layer text transformer with an MLP of 512 (a third of the text
  FLOPs per caption); 1,000 steps."""
  config = base_config()
  config.num_steps = 1000
  config.data.update(image_size=96, captions_per_image=2)
  config.model.image.stem_stride = 12
  config.model.text.update(num_layers=1, mlp_dim=512)
  return config


def base_config() -> ml_collections.ConfigDict:
  """The towers, data and optimiser that the other Flickr configs build on (configs/flickr8k_lit.py,
  configs/flickr8k_minilm.py, configs/flickr4_clip.py): 64 px in 8 px patches, one caption per image,
  a 2-layer text transformer; 1,500 steps (the old from-scratch recipe)."""
  config = base()
  config.num_steps, config.checkpoint_every = 1500, 250
  config.optim.update(learning_rate=1e-3, warmup_steps=100, end_lr_ratio=0.01, weight_decay=0.1)
  config.data.update(name="folder", image_size=64, max_text_len=24, crop_scale_min=0.5, flip=True)
  config.tokenizer.vocab_size = 4096
  config.model.embed_dim = 256
  config.model.image.update(widths=(128, 256), depths=(2, 2), stem="patch", stem_stride=8)
  config.model.text.update(max_len=64, width=256, mlp_dim=1024, dropout_rate=0.1)
  config.evals = ml_collections.ConfigDict(dict(val=evaluator("retrieval", every=250)))
  return config
