"""Throughput of the input pipeline alone, to compare with the train step's.

  python bench/input_pipeline.py --config=configs/flickr8k.py --config.data.root=/path/to/flickr8k

Prints examples/s of the train pipeline (decode, random crop + flip, caption sampling,
tokenisation, batching into [devices, per_device, ...]) over --batches batches after one warm-up
batch, for each --threads value. Run bench/train_step.py with the same config for the step's
pairs/s: the pipeline keeps up when its examples/s is higher.
"""

import itertools
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from jclip.cli import quiet_library_logs
from jclip.config.defaults import complete
from jclip.data.sources import make_source
from jclip.runs.tokenizers import make_tokenizer
from jclip.training.inputs import config_train_batches

# Configs build on each other (`from configs import flickr8k`): the repository root must be
# importable, as it is for train.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to benchmark.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "grain reader threads to try.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  quiet_library_logs()
  config = complete(_CONFIG.value)
  source = make_source(config.data, "train")
  tokenizer = make_tokenizer(config, source)
  print(
    f"{len(source)} training examples, batch {config.batch_size}, "
    f"{config.data.image_size}px, crop_scale_min {config.data.crop_scale_min}, "
    f"flip {config.data.flip}"
  )
  for threads in map(int, _THREADS.value):
    batches = iter(config_train_batches(config, source, tokenizer, num_threads=threads))
    next(batches)  # start-up: threads, first reads
    start = time.perf_counter()
    for _ in itertools.islice(batches, _BATCHES.value):
      pass
    seconds = time.perf_counter() - start
    print(f"threads {threads}: {_BATCHES.value * config.batch_size / seconds:.0f} examples/s")


if __name__ == "__main__":
  app.run(main)
