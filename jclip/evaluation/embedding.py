"""Loading a trained model from its workdir and embedding images and captions with it."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import ml_collections
import numpy as np

from jclip.data.pipeline import eval_image_batches, normalize_images
from jclip.data.sources import tokenizer_from_bytes
from jclip.data.tokenizer import Tokenizer
from jclip.models.clip import CLIP, build_clip
from jclip.training.checkpoint import Checkpoints
from jclip.training.loop import abstract_state


@dataclasses.dataclass
class TrainedModel:
  """A restored model with everything needed to embed: weights, config and tokenizer."""

  model: CLIP
  variables: dict
  config: ml_collections.ConfigDict
  tokenizer: Tokenizer
  step: int

  def __post_init__(self):
    self._encode_image = jax.jit(lambda v, x: self.model.apply(v, x, method=CLIP.encode_image))
    self._encode_text = jax.jit(lambda v, t: self.model.apply(v, t, method=CLIP.encode_text))

  @property
  def logit_scale(self) -> float:
    return float(self.model.apply(self.variables, method=CLIP.logit_scale))

  def embed_images(self, source: Sequence[dict], batch_size: int = 256) -> np.ndarray:
    """Unit-norm embeddings [len(source), D] of the images of a source, in order."""
    return apply_to_images(lambda x: self._encode_image(self.variables, x), source, batch_size,
                           self.config.data.image_size)

  def embed_image_arrays(self, images_uint8_NHWC: np.ndarray) -> np.ndarray:
    return np.asarray(self._encode_image(self.variables, normalize_images(images_uint8_NHWC)))

  def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Unit-norm embeddings [len(texts), D] of texts, in order."""
    return apply_to_texts(lambda t: self._encode_text(self.variables, t), texts, self.tokenizer,
                          self.config.data.max_text_len, batch_size)


def apply_to_images(fn, source: Sequence[dict], batch_size: int, image_size: int) -> np.ndarray:
  """fn(normalised images [b, S, S, 3]) -> [b, ...] over a source's images, concatenated in
  order; every batch is padded to one shape, so a jitted fn compiles once."""
  return np.concatenate([np.asarray(fn(images))[:valid] for images, valid in
                         eval_image_batches(source, batch_size, image_size)])


def apply_to_texts(fn, texts: Sequence[str], tokenizer, max_len: int,
                   batch_size: int) -> np.ndarray:
  """fn(tokens [b, L]) -> [b, ...] over texts, concatenated in order; padded batches as above."""
  chunks = []
  for start in range(0, len(texts), batch_size):
    batch = list(texts[start:start + batch_size])
    tokens = tokenizer.encode(batch + [""] * (batch_size - len(batch)), max_len)
    chunks.append(np.asarray(fn(tokens))[:len(batch)])
  return np.concatenate(chunks)


def load_checkpoint(workdir: str, step: int | None = None):
  """(config, train state, tokenizer, step) of a workdir's latest (or given) checkpoint."""
  checkpoints = Checkpoints(workdir, create=False)
  config = checkpoints.config(step)
  state = checkpoints.state(abstract_state(config), step)
  tokenizer = tokenizer_from_bytes(config.tokenizer, checkpoints.tokenizer_bytes(step))
  return config, state, tokenizer, int(state.step)


def load_trained_model(workdir: str, step: int | None = None) -> TrainedModel:
  """Restores a CLIP checkpoint with its own config and tokenizer."""
  config, state, tokenizer, step = load_checkpoint(workdir, step)
  return TrainedModel(build_clip(config.model), state.variables, config, tokenizer, step)


def embed_split(trained: TrainedModel, source: Sequence[dict], batch_size: int = 256):
  """Embeds every image and every caption of a source.

  Returns (image_emb [N, D], text_emb [M, D], text_to_image [M], captions [M]).
  """
  captions, text_to_image = [], []
  for index in range(len(source)):
    for caption in source.captions(index):
      captions.append(caption)
      text_to_image.append(index)
  return (trained.embed_images(source, batch_size), trained.embed_texts(captions, batch_size),
          np.asarray(text_to_image), captions)
