"""The quickstart trained with SigLIP's sigmoid loss (Zhai et al. 2023) instead of CLIP's softmax.

  python train.py --config=configs/quickstart_siglip.py --workdir=/tmp/jclip_quickstart_siglip
  python eval.py --workdir=/tmp/jclip_quickstart_siglip

Everything but the loss is the quickstart's. The model gains a learnable bias on the logits, and the
temperature and bias start where the paper starts them: t' = ln 10 (a temperature of 0.1) and
b = -10. On another config, `--config.loss=siglip` alone starts the bias at -10 and keeps that
config's temperature; it needs one caption per image (data.captions_per_image=1).
"""

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.loss = "siglip"
  config.model.init_temperature = 0.1
  config.model.init_logit_bias = -10.0
  return config
