"""CLIP from scratch on Flickr8k (6,000 train images, 5 captions each), sized for a 2-core CPU.

  python train.py --config=configs/flickr8k.py --config.data.root=/path/to/flickr8k --workdir=/tmp/f8k
  python eval.py --workdir=/tmp/f8k --split=val

The folder must hold images/ and captions.tsv (see jclip/data/folder.py); it is converted once into a
TFDS array_record dataset under config.data.tfds_dir (default ~/.cache/jclip/tfds).
"""

import ml_collections
from ml_collections import config_dict

from jclip.config import evaluator, text_tower_config


def get_config() -> ml_collections.ConfigDict:
  """The recipe of docs/flickr8k_study.md: 96 px images cut into 12 px patches (the image tower's
  map stays 8x8, so 2.25x the pixels cost no time), two different captions of each image per step
  (the multi-caption loss), and a 1-layer text transformer with an MLP of 512 (a third of the text
  FLOPs per caption); 1,000 steps."""
  config = base_config()
  config.num_steps = 1000
  config.data.image_size = 96
  config.model.image.stem_stride = 12
  config.data.captions_per_image = 2
  config.model.text.num_layers = 1
  config.model.text.mlp_dim = 512
  return config


def base_config() -> ml_collections.ConfigDict:
  """The towers, data and optimiser that the other Flickr configs build on (configs/flickr8k_lit.py,
  configs/flickr8k_minilm.py, configs/flickr4_clip.py): 64 px in 8 px patches, one caption per image,
  a 2-layer text transformer; 1,500 steps (the old from-scratch recipe)."""
  config = ml_collections.ConfigDict()
  config.task = "clip"
  # "clip": CLIP's softmax loss; "siglip": SigLIP's sigmoid loss (configs/quickstart_siglip.py).
  config.loss = "clip"
  config.seed = 0
  config.batch_size = 128
  # Steps over accum_steps * batch_size pairs, run batch_size at a time (configs/quickstart.py).
  config.accum_steps = 1
  config.num_steps = 1500
  config.log_every = 50
  config.checkpoint_every = 250
  config.keep_checkpoints = 2

  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=100, end_lr_ratio=0.01, weight_decay=0.1, b1=0.9,
      b2=0.98, eps=1e-6, grad_clip_norm=1.0, max_consecutive_nonfinite=5,
      # Learning rates of the text tower and the image tower (all but their projections)
      # relative to the rest; 0 locks the tower. For pretrained towers (configs/flickr8k_minilm.py,
      # configs/flickr8k_lit.py).
      text_backbone_lr_scale=1.0, image_backbone_lr_scale=1.0))

  config.data = ml_collections.ConfigDict(dict(
      name="folder", root=config_dict.placeholder(str), tfds_dir=config_dict.placeholder(str),
      image_size=64, max_text_len=24, num_threads=2, crop_scale_min=0.5, flip=True,
      # Different captions of each image in one step (jclip.losses.clip_loss: K right captions).
      captions_per_image=1,
      # Features of locked towers computed once and cached (jclip/runs/feature_cache.py): this
      # many views per image of a locked image backbone (0: none), and every caption's features of
      # a locked text tower. See configs/flickr8k_lit.py.
      cached_views=0, cached_text=False, feature_cache_dir=config_dict.placeholder(str)))
  config.tokenizer = ml_collections.ConfigDict(dict(
      kind="sentencepiece", vocab_size=4096, model_type="unigram"))

  config.model = ml_collections.ConfigDict()
  config.model.embed_dim = 256
  config.model.init_temperature = 0.07
  config.model.max_logit_scale = 100.0
  config.model.dtype = "float32"
  config.model.image = ml_collections.ConfigDict(dict(
      tower="cnn", widths=(128, 256), depths=(2, 2), norm="group", stem="patch", stem_stride=8))
  config.model.image.embed_dim = config.model.get_ref("embed_dim")
  config.model.text = text_tower_config(
      "small", config.model.get_ref("embed_dim"),
      vocab_size=config.tokenizer.get_ref("vocab_size"), max_len=64, width=256, num_layers=2,
      num_heads=4, mlp_dim=1024, dropout_rate=0.1)

  # Scored during training (jclip/evaluation/evaluators.py); the best step's checkpoint is kept.
  config.evals = ml_collections.ConfigDict(dict(val=evaluator("retrieval", every=250)))
  config.best_metric = "val/rsum"
  return config
