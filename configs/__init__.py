"""Experiment configs: `python train.py --config=configs/<name>.py`. Configs may build on each other
(`from configs import flickr8k`): train.py and eval.py run from the repository root."""
