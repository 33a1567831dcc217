"""Evaluation of a trained model, one module per question.

  embedding.py               embed images and captions with any variables (Embedder), or with a
                             restored checkpoint's (TrainedModel)
  retrieval.py               image <-> text recall@k and rsum, chunked, tie-safe
  query.py                   top-k text -> images and image -> captions queries, PNG grids
  zeroshot.py                a classifier from class names: prompt templates, ensembling, logits
  classification_metrics.py  top-k accuracy, per-class precision/recall/F1, confusion matrix (+ PNG)
  trained_classifier.py      a classifier workdir's accuracy, P/R/F1 and confusion matrix
  similarity.py              the caption x image cosine matrix of matched pairs, its separation
  probes.py                  linear and k-NN probes on frozen embeddings, cross-validated
  plots.py                   2-D projections (PCA, UMAP) and training curves as PNGs
  suite.py                   all of the above on one split, as eval.py --suite runs it
  evaluators.py              the evaluators that the training loop runs (config.evals)
  report.py                  what eval.py does with a workdir

Nothing here imports jclip.training: restoring weights needs no optimiser (jclip.runs.restore).
"""
