"""jclip: CLIP from scratch in JAX/Flax.

The package in floors; each imports only the floors above it in this list (tests/test_imports.py):

  jclip.slug        file-name-safe slugs of free text.
  jclip.pixels      what a model's input image is: the per-channel normalisation.
  jclip.batching    a function over many items in batches of one shape (one compile).
  jclip.models      Flax linen towers (CNN image tower, EfficientNet-Lite, mean-pooled text
                    transformer; Hugging Face BERT-family and PyTorch EfficientNet weights read
                    without PyTorch), CLIP (two towers + temperature) and classifier heads.
  jclip.losses      the symmetric InfoNCE loss, written against an optional pmap/shard_map axis,
                    and the classifiers' cross-entropy.
  jclip.data        the synthetic captioned-shapes default, image-caption folders as TFDS datasets,
                    tokenizers (sentencepiece, WordPiece), augmentation, the grain input pipeline.
  jclip.config      every config field with its default (base, and the completion of stored
                    configs), values derived from a config, the checks before training.
  jclip.tasks       what is trained (CLIP or a one-tower classifier): the model built from the
                    config, the batch fields it reads by name, its loss.
  jclip.runs        what a run leaves in its workdir: Orbax checkpoints (latest and best), its
                    tokenizer, metrics.jsonl and TensorBoard files; restoring a model from them;
                    locked towers' features, computed once and cached.
  jclip.evaluation  retrieval, zero-shot, classification metrics, probes, plots, queries, the
                    evaluators that run inside the training loop, and eval.py's work.
  jclip.training    the optimiser and train state, the pmap'd step, its inputs, transfer from
                    other checkpoints, the loop.
  jclip.cli         what train.py, eval.py and bench/ share: quiet logs, one-line errors.
  jclip.api         a trained model from Python: jclip.load(workdir) -> jclip.Model, which
                    embeds, compares and classifies any images and texts.
  jclip.collection  a folder of one's own images embedded into an index on disk (incremental,
                    memory-mapped), searched by text or image, and cleaned (near duplicates,
                    off-topic images): eval.py --images.

The package itself is the public facade: `jclip.load`, `jclip.Model` and `jclip.list_images` are
jclip.api's, imported on first use, so that `import jclip.losses` does not load the whole library.


Shape letters. An array's name ends in the letters of its axes (`image_emb_ND`, `tokens_BL`); each
letter means one thing everywhere in jclip, its tests and its docs:

  B     examples of a batch (on one device inside the pmap'd step)
  N     images: of a split or gallery, or of the global batch in the loss
  M     captions (texts) scored together: a split's, or a batch's B * K
  X     the captions of the global batch in the sharded loss
  K     captions of one image in a step (the multi-caption loss)
  V     views of an image whose features are cached
  A     chunks of an accumulated step (config.accum_steps)
  C     classes
  P     prompts (zero-shot)
  R     the pairs (rows) shown in a similarity heatmap
  T     repeated random draws (docs/contrastive_loss.md)
  Q, G  the queries and the gallery of a ranking
  D     the shared embedding space
  F, E  a tower's own features: a CNN map's channels, a backbone's pooled output, the text
        tower's width (E for the text tower's where both towers' appear)
  L     token positions
  H, W  image height and width; S both, for a square image of data.image_size; 3: RGB
  1     an axis of size one, kept for broadcasting

A lower-case letter is a count that a function takes (top_k).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Model", "list_images", "load"]

if TYPE_CHECKING:
  from jclip.api import Model, list_images, load


def __getattr__(name: str):
  if name in __all__:
    from jclip import api

    return getattr(api, name)
  raise AttributeError(f"module 'jclip' has no attribute {name!r}")
