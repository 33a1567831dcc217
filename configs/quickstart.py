"""Quickstart: CLIP on the embedded captioned shapes; a tiny model that trains in minutes on a CPU.

  python train.py --config=configs/quickstart.py --workdir=/tmp/jclip_quickstart
  python eval.py --workdir=/tmp/jclip_quickstart
"""

import ml_collections

from jclip.config import evaluator, text_tower_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "clip"
  # "clip": CLIP's softmax loss; "siglip": SigLIP's sigmoid loss (configs/quickstart_siglip.py).
  config.loss = "clip"
  config.seed = 0
  config.batch_size = 128  # global: split over every device of every host
  # Gradient accumulation: each optimiser step trains on accum_steps * batch_size pairs (the loss
  # and its negatives span all of them), running the model on batch_size at a time (the memory of
  # batch_size); the exact large-batch gradient, for one more forward pass (jclip/training/step.py).
  config.accum_steps = 1
  config.num_steps = 400
  config.log_every = 50
  config.checkpoint_every = 200
  config.keep_checkpoints = 2

  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=2e-3, warmup_steps=50, end_lr_ratio=0.02, weight_decay=0.05, b1=0.9,
      b2=0.98, eps=1e-6, grad_clip_norm=1.0, max_consecutive_nonfinite=5,
      # Learning rates of the text tower and the image tower (all but their projections)
      # relative to the rest; 0 locks the tower. For pretrained towers (configs/flickr8k_minilm.py,
      # configs/flickr8k_lit.py).
      text_backbone_lr_scale=1.0, image_backbone_lr_scale=1.0))

  config.data = ml_collections.ConfigDict(dict(
      name="synthetic_shapes", image_size=32, num_train=50_000, num_val=350, max_text_len=20,
      num_threads=2,
      # No crops or flips: the captions name positions, and a mirrored "top left" is wrong.
      crop_scale_min=1.0, flip=False,
      # Different captions of each image in a step (jclip.losses.clip_loss: K positives).
      captions_per_image=1))
  config.tokenizer = ml_collections.ConfigDict(dict(
      kind="sentencepiece", vocab_size=128, model_type="unigram"))

  config.model = ml_collections.ConfigDict()
  config.model.embed_dim = 128
  config.model.init_temperature = 0.07
  config.model.max_logit_scale = 100.0
  config.model.dtype = "float32"
  config.model.image = ml_collections.ConfigDict(dict(
      tower="cnn", widths=(32, 64, 128), depths=(1, 1, 1), norm="group", stem="conv",
      stem_stride=2))
  config.model.image.embed_dim = config.model.get_ref("embed_dim")
  config.model.text = text_tower_config(
      "small", config.model.get_ref("embed_dim"),
      vocab_size=config.tokenizer.get_ref("vocab_size"), max_len=32, width=128, num_layers=2,
      num_heads=4, mlp_dim=512)

  # Scored during training (jclip/evaluation/evaluators.py); the best step's checkpoint is kept.
  config.evals = ml_collections.ConfigDict(dict(val=evaluator("retrieval", every=100),
                                                zeroshot=evaluator("zeroshot", every=100)))
  config.best_metric = "val/rsum"
  return config
