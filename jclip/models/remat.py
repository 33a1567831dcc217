"""Rematerialisation of a tower's blocks (config.model.remat): memory for compute.

A block under `nn.remat` keeps only its input for the backward pass and recomputes its activations
from it there (jax.checkpoint with its default policy: no intermediate value is saved), as
open_clip's --grad-checkpointing does with torch.utils.checkpoint per residual block. Where the
compiler schedules each recomputation late, the activations held through a step shrink from every
block's to one block's at a time, for one more forward pass of the blocks; XLA's CPU backend does
not, and there the memory grows (BUILD.md, "Rematerialisation"). The parameters and what is
computed stay the same (tests/test_remat.py).
"""

from __future__ import annotations

import flax.linen as nn


def rematerialised(block: type[nn.Module], remat: bool, train_argnum: int) -> type[nn.Module]:
  """`block`, or with `remat` the same block under nn.remat. `train_argnum` is the position of
  the block's `train` argument in its __call__, self counting as 0: a Python bool that picks
  the code (dropout on or off), so it is static."""
  return nn.remat(block, static_argnums=(train_argnum,)) if remat else block
