"""Quickstart: CLIP on the embedded captioned shapes; a tiny model that trains in minutes on a CPU.

  python train.py --config=configs/quickstart.py --workdir=/tmp/jclip_quickstart
  python eval.py --workdir=/tmp/jclip_quickstart

Every field's default is the quickstart's, so this config is jclip's base itself: each field is
listed and explained in jclip/config/defaults.py, and the other configs state what they change.
`python train.py --config=configs/quickstart.py --show_config` prints them all.
"""

import ml_collections

from jclip.config.defaults import base


def get_config() -> ml_collections.ConfigDict:
  return base()
