"""The quickstart shrunk until a train step takes milliseconds: for tests and for trying the
machinery (resuming, preemption, several processes) in seconds.

  python train.py --config=configs/tiny.py --workdir=/tmp/jclip_tiny
"""

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.batch_size = 16
  config.num_steps = 6
  config.log_every = 2
  config.checkpoint_every = 2
  config.keep_checkpoints = 5
  config.optim.warmup_steps = 2
  config.data.image_size = 16
  config.data.num_train = 64
  config.data.num_val = 24
  config.data.max_text_len = 12
  config.data.num_threads = 1
  config.tokenizer.vocab_size = 64
  config.model.embed_dim = 16
  config.model.image.widths = (8, 16)
  config.model.image.depths = (1, 1)
  config.model.text.width = 16
  config.model.text.num_layers = 1
  config.model.text.num_heads = 2
  config.model.text.mlp_dim = 32
  config.model.text.max_len = 16
  # Dropout on, so that resuming also covers the per-step dropout randomness.
  config.model.text.dropout_rate = 0.1
  for entry in config.evals.values():
    entry.every, entry.batch_size = 2, 8
  return config
