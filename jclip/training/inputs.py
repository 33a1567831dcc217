"""What a run's train step is fed: this host's batches of the train split, as config.data says,
with a locked tower's cached features in place of its inputs, put on the devices ahead of the step
that reads them."""

from __future__ import annotations

import collections
import functools
import time

import jax
import ml_collections

from jclip.config.derived import step_batch_size
from jclip.data.pipeline import train_batches
from jclip.data.sources import CachedFeatureSource
from jclip.data.tokenizer import Tokenizer
from jclip.runs.feature_cache import split_caption_features, split_features
from jclip.runs.metrics import say
from jclip.training.step import pmap_sharding

# How many steps ahead of the step that reads it a batch is put on the devices: two, so that one
# batch can be on its way while the step before runs (as flax.jax_utils.prefetch_to_device advises
# for GPUs).
DEVICE_PREFETCH = 2


def config_train_batches(
  config: ml_collections.ConfigDict,
  source,
  tokenizer,
  start_step: int = 0,
  num_threads: int | None = None,
):
  """This host's train batches from `start_step` on, one per optimiser step (accum_steps *
  batch_size pairs), as config.data describes."""
  data = config.data
  return train_batches(
    source,
    functools.partial(tokenizer.encode, max_len=data.max_text_len),
    image_size=data.image_size,
    crop_scale_min=data.crop_scale_min,
    flip=data.flip,
    captions_per_image=data.captions_per_image,
    global_batch_size=step_batch_size(config),
    num_local_devices=jax.local_device_count(),
    seed=config.seed,
    start_step=start_step,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    num_threads=data.num_threads if num_threads is None else num_threads,
  )


def with_cached_features(
  config: ml_collections.ConfigDict, source, variables, tokenizer: Tokenizer
):
  """The train split with the features of its locked towers in place of their inputs
  (jclip/runs/feature_cache.py): data.cached_views views per image, and/or every caption
  (data.cached_text); computed on the first run, read back on later ones. Without either, the
  split itself."""
  if not (config.data.cached_views or config.data.cached_text):
    return source
  image_features_NVF = text_features_MF = None
  if config.data.cached_views:
    start = time.perf_counter()
    image_features_NVF = split_features(config, source, variables, config.data.cached_views)
    say(
      f"Image features: {image_features_NVF.shape[0]} images x {image_features_NVF.shape[1]} "
      f"view(s) x {image_features_NVF.shape[2]} in {time.perf_counter() - start:.1f} s; the "
      "image backbone will not run in training."
    )
  if config.data.cached_text:
    start = time.perf_counter()
    text_features_MF = split_caption_features(config, source, variables, tokenizer)
    say(
      f"Caption features: {text_features_MF.shape[0]} captions x {text_features_MF.shape[1]} "
      f"in {time.perf_counter() - start:.1f} s; the text tower will not run in training."
    )
  return CachedFeatureSource(source, image_features_NVF, text_features_MF)


class OnDevices:
  """The batches of an endless iterator, each put on the local devices (laid out as the pmap'd
  step reads it) DEVICE_PREFETCH steps before it is handed out: jax copies in the background, so
  the copy overlaps the steps before and a fast accelerator need not wait for it. `wait_seconds`
  adds up the time that asking for a batch took: waiting for the pipeline, and starting the
  copies."""

  def __init__(self, batches, ahead: int = DEVICE_PREFETCH):
    self._batches, self._ahead = iter(batches), ahead
    self._queue = collections.deque()
    self._sharding = pmap_sharding(jax.local_device_count())
    self.wait_seconds = 0.0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    start = time.perf_counter()
    while len(self._queue) <= self._ahead:  # this step's batch and `ahead` more
      self._queue.append(jax.device_put(next(self._batches), self._sharding))
    self.wait_seconds += time.perf_counter() - start
    return self._queue.popleft()
