"""Evaluation of a trained model, one module per question.

  embedding.py       load a workdir's model; embed a split's images and captions
  retrieval.py       image <-> text recall@k, chunked, tie-safe
  query.py           top-k text -> images and image -> captions queries, PNG grids
  zeroshot.py        a classifier from class names: prompt templates, ensembling, logits
  classification.py  top-k accuracy, per-class precision/recall/F1, confusion matrix (+ PNG)
  similarity.py      the caption x image cosine matrix of matched pairs, its separation score
  probes.py          linear and k-NN probes on frozen embeddings, cross-validated
  plots.py           2-D projections (PCA, UMAP) and training curves as PNGs
  suite.py           all of the above on one split, as eval.py --suite runs it
"""
