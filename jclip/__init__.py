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
"""

__version__ = "0.1.0"
