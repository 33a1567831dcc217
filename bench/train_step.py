"""Throughput of the jitted (pmap'd) CLIP train step, without the input pipeline.

  python bench/train_step.py --config=configs/quickstart.py [--steps=20] [--config.batch_size=...]

With locked towers whose features are cached (config.data.cached_views > 0, config.data.cached_text;
e.g. configs/flickr8k_lit.py) the step's inputs are those features, as in training; add
--config.data.cached_views=0 (or --config.data.cached_text=False) to time the same model running
the locked tower every step.

With --config.accum_steps=k a step trains on k * batch_size pairs, in k chunks of batch_size
(jclip/training/step.py): compare its memory with a step of batch_size, and its pairs/s with a step
of k * batch_size.

Prints the platform and device kind, pairs/s after warm-up (and pairs per CPU-second, which a busy
machine changes less), the model FLOPs of one step (from XLA's cost analysis of the compiled step,
summed over devices; with accumulation, k times a plain step's on one chunk, the recomputed forward
pass not counted), the achieved FLOP/s, and that as a fraction of this machine's matmul peak in the
towers' dtype (config.model.dtype; measured here on a jitted square matmul, --matmul_size, on one
device, times the devices of an accelerator). Then memory: XLA's buffer assignment of the compiled
step on one device (arguments, i.e. train state and batch, plus temporaries, i.e. activations and
gradients, plus outputs not written over the donated state), which does not depend on what else
runs, for the config and, with --compare_remat, for the same step with config.model.remat the
other way (one more compilation); the accelerator's own peak bytes in use, where its runtime
reports them (GPU, TPU); and the process's peak resident memory (ru_maxrss: every device, the
compiler, Python and the libraries; on a CPU, with one device, the figure a laptop feels).
"""

import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jclip.cli import quiet_library_logs
from jclip.config.defaults import complete
from jclip.config.derived import describe_step_batch, step_batch_size, text_architecture
from jclip.tasks import build_image_encoder, build_model, model_inputs
from jclip.training.state import init_state
from jclip.training.step import compiled_programs, make_p_train_step, replicate

# Configs build on each other (`from configs import flickr8k`): the repository root must be
# importable, as it is for train.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to benchmark.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps after warm-up.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps (compilation and caches).")
_MATMUL_SIZE = flags.DEFINE_integer(
  "matmul_size", 2048, "Side of the square matmul that measures the peak FLOP/s."
)
_COMPARE_REMAT = flags.DEFINE_bool(
  "compare_remat", True, "Also print the memory of the step with config.model.remat flipped."
)
flags.mark_flags_as_required(["config"])


def matmul_peak_flops(dtype: str = "float32", n: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of an n x n matmul in `dtype` under jit on the default device."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    matmul(a).block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - start)


def _device_bytes(memory) -> int:
  """One device's bytes in a compiled program: arguments, temporaries, and the outputs that are
  not written over a donated argument (the new state over the old one)."""
  return (
    memory.argument_size_in_bytes
    + memory.temp_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
  )


def _largest_program(programs):
  """The memory analysis of the program that holds the most: with accumulation the programs run
  one after another, so the step's peak is the largest one's."""
  return max((compiled.memory_analysis() for compiled in programs), key=_device_bytes)


def _remat_flipped_memory(config, state, replicated, batch, key):
  """(config.model.remat the other way, the memory analysis of the step with it): the same
  weights, run by the model built with the other setting."""
  flipped = config.copy_and_resolve_references()
  flipped.model.remat = not config.model.remat
  flipped_state = replicated.replace(apply_fn=build_model(flipped).apply)
  step_fn = make_p_train_step(flipped, state.params)
  return flipped.model.remat, _largest_program(
    compiled_programs(step_fn, flipped_state, batch, key)
  )


def _chunk_step_flops(config, state, programs, replicated, batch, key) -> float:
  """One device's FLOPs in a plain step (no accumulation) on one chunk of `batch`. A step of k
  chunks does k times that much model work; its recomputed forward pass is not counted, and
  neither could XLA's cost analysis count it: it counts a loop body (pass 1's lax.map) once."""
  accum_steps = config.accum_steps
  if accum_steps == 1:
    compiled = programs[0]
  else:
    plain_config = config.copy_and_resolve_references()
    plain_config.accum_steps = 1
    chunk = jax.tree.map(lambda x: x[:, : x.shape[1] // accum_steps], batch)  # device-major rows
    compiled = make_p_train_step(plain_config, state.params).lower(replicated, chunk, key).compile()
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def _backbone_feature_shape(config) -> tuple[int, ...]:
  """The shape of one image's cached backbone features: the tower's output without projection."""
  tower = build_image_encoder(config, None)
  size = config.data.image_size
  return jax.eval_shape(
    lambda: tower.init_with_output(jax.random.key(0), jnp.zeros((1, size, size, 3)))[0]
  ).shape[1:]


def main(argv):
  del argv
  quiet_library_logs()
  config = complete(_CONFIG.value)
  devices = jax.local_device_count()
  pairs = step_batch_size(config)  # per step: accum_steps chunks of batch_size
  accum_steps = config.accum_steps
  per_device = pairs // devices
  _, state = init_state(config)
  size, length = config.data.image_size, config.data.max_text_len
  rng = np.random.default_rng(0)
  text = text_architecture(config)
  captions_per_image = config.data.captions_per_image
  captions = per_device * captions_per_image  # per device, image by image
  # The batch fields the model reads (a locked tower's cached features, or its inputs).
  fields = {
    "image": lambda: rng.normal(size=(devices, per_device, size, size, 3)),
    "image_features": lambda: rng.normal(
      size=(devices, per_device, *_backbone_feature_shape(config))
    ),
    "tokens": lambda: rng.integers(1, text.vocab_size, size=(devices, captions, length)),
    "text_features": lambda: rng.normal(size=(devices, captions, text.width)),
  }
  batch = {
    name: fields[name]().astype(np.int32 if name == "tokens" else np.float32)
    for name in model_inputs(config)
  }
  batch["label"] = rng.integers(
    0, config.model.num_classes or 1, size=(devices, per_device)
  ).astype(np.int32)
  image_shape = next(x.shape[2:] for name, x in batch.items() if name.startswith("image"))
  text_shape = next(x for name, x in batch.items() if name in ("tokens", "text_features"))
  step_fn = make_p_train_step(config, state.params)
  replicated = replicate(state)
  key = jax.random.key(0)
  # The batch on the devices once, laid out as pmap reads it: the loop times compute only, and the
  # programs compiled for the analyses are the ones the timed calls run.
  batch = jax.device_put(batch, jax.tree.leaves(replicated)[0].sharding)
  programs = compiled_programs(step_fn, replicated, batch, key)
  memory = _largest_program(programs)
  flops_per_step = (
    devices * accum_steps * _chunk_step_flops(config, state, programs, replicated, batch, key)
  )
  flipped = (
    _remat_flipped_memory(config, state, replicated, batch, key) if _COMPARE_REMAT.value else None
  )

  for _ in range(_WARMUP.value):
    replicated, metrics = step_fn(replicated, batch, key)
  jax.block_until_ready(metrics)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(_STEPS.value):
    replicated, metrics = step_fn(replicated, batch, key)
  jax.block_until_ready(metrics)
  seconds_per_step = (time.perf_counter() - start) / _STEPS.value
  cpu_seconds_per_step = (time.process_time() - cpu_start) / _STEPS.value

  num_params = sum(np.size(p) for p in jax.tree.leaves(state.params))
  achieved = flops_per_step / seconds_per_step
  dtype, device = config.model.dtype, jax.local_devices()[0]
  # A host's CPU devices share its cores, which one matmul measures; accelerators add up.
  peak = matmul_peak_flops(dtype, _MATMUL_SIZE.value) * (1 if device.platform == "cpu" else devices)
  print(
    f"devices: {devices} x {device.platform} ({device.device_kind}), towers in {dtype}, batch "
    f"{describe_step_batch(config)} "
    f"images x {captions_per_image} caption(s), params {num_params / 1e6:.2f}M, image input "
    f"{list(image_shape)}, text input {list(text_shape.shape[2:])} {text_shape.dtype}"
  )
  print(f"step time: {seconds_per_step * 1e3:.1f} ms -> {pairs / seconds_per_step:.1f} pairs/s")
  # On a shared machine the wall time counts the waits for a core too; the CPU time does not.
  print(
    f"step CPU time (all threads): {cpu_seconds_per_step:.2f} s -> "
    f"{pairs / cpu_seconds_per_step:.1f} pairs per CPU-second"
  )
  print(f"model FLOPs per step: {flops_per_step / 1e9:.2f} GFLOP")
  print(
    f"achieved: {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the {dtype} matmul "
    f"peak measured here ({peak / 1e9:.0f} GFLOP/s over {devices} device(s))"
  )
  mib = lambda n: f"{n / 2**20:.1f} MiB"
  print(
    f"memory per device (XLA's buffer assignment): {mib(_device_bytes(memory))} = arguments "
    f"{mib(memory.argument_size_in_bytes)} (state and batch) + temporaries "
    f"{mib(memory.temp_size_in_bytes)} (activations, gradients, ...) + outputs "
    f"{mib(memory.output_size_in_bytes - memory.alias_size_in_bytes)}, model.remat="
    f"{config.model.remat}"
  )
  if flipped:
    remat, other = flipped
    print(
      f"  with model.remat={remat}: {mib(_device_bytes(other))} (temporaries "
      f"{mib(other.temp_size_in_bytes)})"
    )
  stats = device.memory_stats()  # None on a CPU
  if stats and "peak_bytes_in_use" in stats:
    print(f"accelerator peak bytes in use (device 0): {mib(stats['peak_bytes_in_use'])}")
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
  print(f"process peak resident memory: {mib(peak_rss)}")


if __name__ == "__main__":
  app.run(main)
