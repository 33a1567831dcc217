"""Evaluation of a trained model, one module per question.

  embedding.py               a model's outputs on a split: Predictor (its jitted functions, for any
                             variables), EvalSplit (a split read once, embedded once per step),
                             EmbeddedSplit
  evaluators.py              retrieval, zero-shot and classification evaluators: run by the training
                             loop (config.evals) and by eval.py on a checkpoint
  retrieval.py               image <-> text recall@k and rsum, chunked, tie-safe
  query.py                   top-k text -> images and image -> captions queries, PNG grids
  zeroshot.py                a classifier from class names: prompt templates, ensembling, logits
  classification_metrics.py  top-k accuracy, per-class precision/recall/F1, confusion matrix (+ PNG)
  similarity.py              the caption x image cosine matrix of matched pairs, its separation
  probes.py                  linear and k-NN probes on frozen embeddings, cross-validated
  plots.py                   2-D projections (PCA, UMAP) and training curves as PNGs
  outputs.py                 the writer of a run's evaluation files
  suite.py                   the evaluators plus probes, plots and projections on one split
                             (eval.py --suite)
  prompt_scoring.py          zero-shot accuracy of candidate prompts on labelled image embeddings,
                             images cut into those that choose prompts and those that score them
  prompt_study.py            class attributes in the prompt, chosen greedily, against control words
  template_sets.py           zero-shot template sets compared
  compare.py                 several workdirs side by side: retrieval, zero-shot, separation
  report.py                  what eval.py does with a workdir
  studies.py                 what eval.py does for --prompt_study, --template_sets,
                             --compare_workdirs

Nothing here imports jclip.training: restoring weights needs no optimiser (jclip.runs.restore).
"""
