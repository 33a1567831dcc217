"""jclip: CLIP from scratch in JAX/Flax.

Modules, each with one job:
  jclip.models      Flax linen towers (CNN image tower, mean-pooled text transformer) and CLIP.
  jclip.losses      the symmetric InfoNCE loss, written against an optional pmap/shard_map axis.
  jclip.data        the synthetic captioned-shapes default, tokenizers, the grain input pipeline.
  jclip.training    train state, the pmap'd step, the loop, Orbax checkpoints, metric logging.
  jclip.evaluation  retrieval metrics, gallery embedding and text/image queries.
"""

__version__ = "0.1.0"
