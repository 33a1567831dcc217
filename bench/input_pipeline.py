"""Throughput of the input pipeline alone, and how long the train step that it feeds waits for it.

  python bench/input_pipeline.py --config=configs/flickr8k.py --config.data.root=/path/to/flickr8k

Prints examples/s of the train pipeline (decode, random crop + flip, caption sampling,
tokenisation, batching into [devices, per_device, ...]) over --batches batches after one warm-up
batch, for each --threads value. Then runs the train step on the pipeline's batches (with
config.data.num_threads) as the training loop does, each batch put on the devices
DEVICE_PREFETCH steps ahead of its step (jclip/training/inputs.py), and prints the time per step
and how much of it the loop spent waiting for a batch: near zero when the pipeline keeps up. The
loop logs the same wait as `data_wait_ms`; bench/train_step.py times the step alone.
"""

import itertools
import os
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from jclip.cli import quiet_library_logs
from jclip.config.defaults import complete
from jclip.config.derived import step_batch_size
from jclip.data.sources import make_source
from jclip.runs.tokenizers import make_tokenizer
from jclip.training.inputs import (
  DEVICE_PREFETCH,
  OnDevices,
  config_train_batches,
  with_cached_features,
)
from jclip.training.state import init_state
from jclip.training.step import make_p_train_step, replicate

# Configs build on each other (`from configs import flickr8k`): the repository root must be
# importable, as it is for train.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to benchmark.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "grain reader threads to try.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps fed by the pipeline (0: none).")
flags.mark_flags_as_required(["config"])


def _pipeline_alone(config, source, tokenizer) -> None:
  for threads in map(int, _THREADS.value):
    batches = iter(config_train_batches(config, source, tokenizer, num_threads=threads))
    next(batches)  # start-up: threads, first reads
    start = time.perf_counter()
    for _ in itertools.islice(batches, _BATCHES.value):
      pass
    seconds = time.perf_counter() - start
    print(f"threads {threads}: {_BATCHES.value * config.batch_size / seconds:.0f} examples/s")


def _step_fed_by_the_pipeline(config, source, tokenizer) -> None:
  _, state = init_state(config)
  source = with_cached_features(config, source, state.variables, tokenizer)
  step_fn, replicated = make_p_train_step(config, state.params), replicate(state)
  batches, key = OnDevices(config_train_batches(config, source, tokenizer)), jax.random.key(0)
  replicated, metrics = step_fn(replicated, next(batches), key)  # compiles
  jax.block_until_ready(metrics)
  waited, start = batches.wait_seconds, time.perf_counter()
  for _ in range(_STEPS.value):
    replicated, metrics = step_fn(replicated, next(batches), key)
  jax.block_until_ready(metrics)
  per_step = (time.perf_counter() - start) / _STEPS.value
  wait = (batches.wait_seconds - waited) / _STEPS.value
  print(
    f"train step fed by the pipeline ({DEVICE_PREFETCH} batches ahead on the devices): "
    f"{per_step * 1e3:.1f} ms per step ({step_batch_size(config) / per_step:.1f} pairs/s), "
    f"{wait * 1e3:.1f} ms of it waiting for data ({wait / per_step:.0%})"
  )


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
  _pipeline_alone(config, source, tokenizer)
  if _STEPS.value:
    _step_fed_by_the_pipeline(config, source, tokenizer)


if __name__ == "__main__":
  app.run(main)
