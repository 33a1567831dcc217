"""Training: optimiser and train state, the pmap'd step, Orbax checkpoints, metric logging, the loop."""
