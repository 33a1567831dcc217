"""How fast XLA runs a 3x3 convolution at the shapes a CNN tower meets, in GFLOP/s.

  python bench/conv_shapes.py
  python bench/conv_shapes.py --batch=128 --shapes=32x32x32,16x16x64,8x8x128,8x8x256,4x4x256

Each shape HxWxC is a feature map of C channels; the convolution keeps C channels (stride 1, SAME
padding), as a residual block's does. It times the jitted forward + backward pass (what a train step
runs) after a warm-up and prints FLOP/s next to a float32 matmul measured on the spot. On XLA's CPU
backend, small maps with few channels run far below the matmul rate, and wide, small maps near it:
the reason jclip's CPU configs embed patches with a "patch" stem (jclip/models/cnn.py).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch.")
_SHAPES = flags.DEFINE_list(
  "shapes", ["32x32x32", "16x16x64", "8x8x128", "8x8x256", "4x4x256"], "Feature maps HxWxC to time."
)
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per shape.")


def _seconds_per_call(fn, *args) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  start = time.perf_counter()
  for _ in range(_REPEATS.value):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / _REPEATS.value


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  n = 2048
  square = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
  matmul_rate = 2 * n**3 / _seconds_per_call(jax.jit(lambda x: x @ x), square)
  print(f"float32 {n}x{n} matmul: {matmul_rate / 1e9:.1f} GFLOP/s")

  def loss(kernel_33CC, x_BHWF):
    y = jax.lax.conv_general_dilated(
      x_BHWF, kernel_33CC, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.sum(y * y)

  forward_backward = jax.jit(jax.grad(loss, argnums=(0, 1)))
  print(f"3x3 convolution, batch {_BATCH.value}, forward + backward:")
  for shape in _SHAPES.value:
    height, width, channels = map(int, shape.split("x"))
    x = jnp.asarray(rng.normal(size=(_BATCH.value, height, width, channels)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, channels, channels)), jnp.float32)
    # The forward pass is 2 * 9 * C * C FLOPs per output pixel; the backward pass twice that.
    flops = 3 * 2 * 9 * channels * channels * height * width * _BATCH.value
    rate = flops / _seconds_per_call(forward_backward, kernel, x)
    print(
      f"  {shape:>10}: {rate / 1e9:6.1f} GFLOP/s ({100 * rate / matmul_rate:.0f}% of the matmul)"
    )


if __name__ == "__main__":
  app.run(main)
