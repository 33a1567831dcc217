"""The quickstart shrunk until a train step takes milliseconds: for tests and for trying the
machinery (resuming, preemption, several processes) in seconds.

  python train.py --config=configs/tiny.py --workdir=/tmp/jclip_tiny
"""

import ml_collections

from jclip.config.defaults import base


def get_config() -> ml_collections.ConfigDict:
  config = base()
  config.batch_size, config.num_steps = 16, 6
  config.log_every, config.checkpoint_every, config.keep_checkpoints = 2, 2, 5
  config.optim.warmup_steps = 2
  config.data.update(image_size=16, num_train=64, num_val=24, max_text_len=12, num_threads=1)
  config.tokenizer.vocab_size = 64
  config.model.embed_dim = 16
  config.model.image.update(widths=(8, 16), depths=(1, 1))
  # Dropout on, so that resuming also covers the per-step dropout randomness.
  config.model.text.update(
    width=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=16, dropout_rate=0.1
  )
  for entry in config.evals.values():
    entry.every, entry.batch_size = 2, 8
  return config
