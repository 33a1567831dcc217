"""Training: the optimiser and train state, the pmap'd step and its inputs, transfer, the loop."""
