"""Data: sources of captioned images, tokenizers and the grain input pipeline.

A *source* is a random-access sequence of examples; each example is a dict with
  "image":    uint8 [H, W, 3]
  "captions": list[str] (one or more captions of that image)
  "label":    int (optional; a class index)
and `source.captions(i)` returns example i's captions without decoding its image.
Every source works with the same pipeline, so the synthetic default and real folders train alike.
"""
