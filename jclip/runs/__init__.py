"""What a run leaves in its workdir, written by training and read by training and evaluation alike.

  checkpoint.py  Orbax checkpoints: the model's variables, the optimiser, the config, the tokenizer;
                 the latest steps (to resume) and the best step by config.best_metric (to use)
  tokenizers.py  a run's tokenizer: made from the config for a new run, read back from a checkpoint
  restore.py     a trained model from a workdir, with its own config and tokenizer, no optimiser
  metrics.py     metrics.jsonl and TensorBoard event files

This floor sits below both training/ and evaluation/: it imports neither.
"""
