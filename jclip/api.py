"""jclip from Python: a trained model from its workdir, applied to any images and texts.

    import jclip
    model = jclip.load("/tmp/jclip_quickstart")        # the best checkpoint, as eval.py loads it
    image_emb_ND = model.encode_images(["a.jpg", pil_image, uint8_array])   # or a folder's path
    text_emb_MD = model.encode_texts(["a red circle", "a blue square"])
    sim_NM = model.similarity(images, texts)            # cosine similarities
    probs_NC = model.zero_shot(images, ["circle", "square"])

Images are decoded completely, turned upright by their EXIF orientation, converted to RGB and
resized and centre-cropped to the model's resolution, exactly as evaluation prepares them; a folder
stands for every image under it (`jclip.list_images(folder)`: that order). Embeddings are float32
numpy arrays with unit rows. A classifier's workdir (the course path's first step) loads too: it
classifies (`Model.classify`) and refuses, with a message saying so, what only CLIP can do.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence

import numpy as np

from jclip.batching import apply_in_batches
from jclip.data.images import as_rgb_image, list_image_files, resize_and_center_crop
from jclip.errors import UserError
from jclip.evaluation.embedding import Predictor
from jclip.evaluation.zeroshot import softmax, zero_shot_probabilities
from jclip.pixels import normalize_images
from jclip.runs.feature_cache import weights_digest
from jclip.runs.restore import RestoredModel, restore_model

# Fewer items than this embed without a progress bar.
PROGRESS_FROM = 512


def load(workdir: str | os.PathLike, step: str | int | None = None) -> Model:
  """The model of a training workdir: `step` is "best", "latest", a step number, or None (the best
  checkpoint when the run kept one, else the latest; as eval.py)."""
  workdir = os.fspath(workdir)
  return Model(restore_model(workdir, step), workdir)


def list_images(folder: str | os.PathLike) -> list[str]:
  """The paths of every image under `folder` (JPEG, PNG, WebP; subfolders too), sorted: the order
  of the rows of `Model.encode_images(folder)`."""
  folder = os.fspath(folder)
  return [os.path.join(folder, name) for name in list_image_files(folder)]


def _image_items(images) -> list:
  """A folder's path -> its images' paths; one image (a path, a Pillow image, an array [H, W(,
  C)]) -> a list of it; a list -> itself."""
  if isinstance(images, (str, os.PathLike)):
    return list_images(images) if os.path.isdir(images) else [images]
  if isinstance(images, np.ndarray) and images.ndim in (2, 3):
    return [images]
  if not isinstance(images, (Sequence, np.ndarray)) or isinstance(images, (str, bytes)):
    return [images]
  if not len(images):
    raise UserError("No images were given: pass paths, Pillow images, uint8 arrays or a folder.")
  return list(images)


def _texts(texts) -> list[str]:
  texts = [texts] if isinstance(texts, str) else list(texts)
  if not texts:
    raise UserError("No texts were given: pass a string or a list of strings.")
  for index, text in enumerate(texts):
    if not isinstance(text, str) or not text.strip():
      raise UserError(f"Text {index} is {text!r}: every text must be a non-empty string.")
  return texts


def _batch_size_for(num_items: int, batch_size: int) -> int:
  """A power of two at least num_items, at most batch_size: one image is not padded to a batch of
  256, and the jitted function still sees few distinct shapes (each compiles once)."""
  return min(batch_size, 1 << max(num_items - 1, 0).bit_length())


class Model:
  """A trained jclip model (see the module docstring); made by `jclip.load`."""

  def __init__(self, restored: RestoredModel, workdir: str):
    self._restored = restored
    self.workdir = workdir
    self.config = restored.config
    self.kind = restored.config.task  # "clip", "image_classifier" or "text_classifier"
    self.step = restored.step
    self.image_size = restored.config.data.image_size
    self._predictor = Predictor(restored.model, restored.tokenizer, restored.config)
    self._device_variables = self._predictor.on_devices(restored.variables)  # copied once
    # A classifier's classes, in the order of its outputs; one trained before train.py recorded
    # their names (data.class_names) gets numbers.
    self.class_names = None
    if self.kind != "clip":
      recorded = restored.config.data.class_names
      num_classes = restored.config.model.num_classes
      self.class_names = list(recorded or (f"class {c}" for c in range(num_classes)))
    self._description = f"{self.kind}, step {self.step} of {workdir} ({restored.checkpoint.reason})"

  def __repr__(self) -> str:
    return f"jclip.Model({self._description}; images {self.image_size} px)"

  @property
  def embed_dim(self) -> int:
    """D: the size of the embeddings (a CLIP's shared space)."""
    return self.config.model.embed_dim

  @property
  def variables(self) -> dict:
    """The model's weights, as `model.apply` takes them."""
    return self._restored.variables

  @functools.cached_property
  def fingerprint(self) -> str:
    """A digest of the weights and config: equal for the same model, different for any other (an
    index of embeddings records it, and refuses another model's)."""
    digest = hashlib.sha256(self.config.to_json(sort_keys=True).encode())
    digest.update(weights_digest(self.variables).encode())
    return digest.hexdigest()[:16]

  @property
  def logit_scale(self) -> float:
    """CLIP's trained multiplier exp(t) of the cosine similarities (at most 100)."""
    self._require("clip", "logit_scale")
    return self._predictor.logit_scale(self.variables)

  def _require(self, kind: str, what: str) -> None:
    if self.kind == kind:
      return
    if self.kind == "clip":
      raise UserError(
        f"{what} is a classifier's; this model is a CLIP: classify images with "
        "zero_shot(images, class_names) instead."
      )
    inputs = "images" if self.kind == "image_classifier" else "texts"
    raise UserError(
      f"{what} needs a CLIP model; this one is an {self.kind.replace('_', ' ')} "
      f"({len(self.class_names)} classes: {', '.join(self.class_names)}). It can only "
      f"classify({inputs}) into those classes."
    )

  def preprocess(self, image) -> np.ndarray:
    """One image (a path, a Pillow image or a uint8 array of any size and mode) as the model sees
    it: upright RGB, resized and centre-cropped to uint8 [S, S, 3]."""
    return resize_and_center_crop(as_rgb_image(image), self.image_size)

  def _apply_to_images(self, fn, images, batch_size: int) -> np.ndarray:
    items = _image_items(images)
    return apply_in_batches(
      fn,
      items,
      _batch_size_for(len(items), batch_size),
      prepare=lambda batch: normalize_images(np.stack([self.preprocess(i) for i in batch])),
      desc="images" if len(items) >= PROGRESS_FROM else None,
    )

  def encode_images(self, images, batch_size: int = 64) -> np.ndarray:
    """Unit embeddings [N, D] of images: a list of paths, Pillow images or uint8 arrays, one of
    them, or a folder's path (every image under it, in `jclip.list_images` order). A file that
    cannot be decoded raises an error naming it."""
    self._require("clip", "encode_images")
    return self._apply_to_images(
      lambda x: self._predictor.image_batch(self._device_variables, x), images, batch_size
    )

  def encode_texts(self, texts, batch_size: int = 256) -> np.ndarray:
    """Unit embeddings [M, D] of a string or a list of strings."""
    self._require("clip", "encode_texts")
    texts = _texts(texts)
    return self._predictor.texts(
      self._device_variables, texts, _batch_size_for(len(texts), batch_size)
    )

  def similarity(self, images, texts) -> np.ndarray:
    """Cosine similarities [N, M] of every image to every text (in [-1, 1])."""
    return self.encode_images(images) @ self.encode_texts(texts).T

  def zero_shot(
    self,
    images,
    class_names: Sequence[str],
    templates: Sequence[str] | None = None,
    prompts: Mapping[str, Sequence[str]] | None = None,
  ) -> np.ndarray:
    """Class probabilities [N, C] of images among `class_names`, with no training: each class is
    written into every template (default: jclip.evaluation.zeroshot.DEFAULT_TEMPLATES, "a photo
    of a {}." ...), or described by its own sentences in `prompts` ({class: [sentence, ...]});
    the class's prompt embeddings are averaged, and the image's cosine similarities to the
    classes, times the trained scale, go through a softmax."""
    self._require("clip", "zero_shot")
    return zero_shot_probabilities(
      self.encode_images(images),
      self.encode_texts,
      _texts(class_names),
      templates,
      prompts,
      self.logit_scale,
    )

  def classify(self, inputs, batch_size: int = 64) -> np.ndarray:
    """A classifier's class probabilities [N, C] (C = len(self.class_names)): of images for an
    image classifier, of texts for a text classifier."""
    if self.kind == "clip":
      self._require("image_classifier", "classify")
    logits_batch = lambda x: self._predictor.logits_batch(self._device_variables, x)
    if self.kind == "image_classifier":
      logits_NC = self._apply_to_images(logits_batch, inputs, batch_size)
    else:
      texts = _texts(inputs)
      tokens_NL = self._predictor.tokenizer.encode(texts, self.config.data.max_text_len)
      logits_NC = apply_in_batches(logits_batch, tokens_NL, _batch_size_for(len(texts), 256))
    return softmax(logits_NC)
