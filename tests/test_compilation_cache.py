"""train.py and eval.py keep XLA's compiled programs between runs (--compilation_cache, on by
default): in $JAX_COMPILATION_CACHE_DIR when it is set, else in ~/.cache/jclip/xla; a second run
reads them instead of compiling again, and --nocompilation_cache keeps nothing anywhere."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, script_env
from jclip.cli import use_compilation_cache

# Two steps of the tiny config on one device, no evaluator: the programs of a start, quickly.
TRAIN = [
  "train.py",
  "--config=configs/tiny.py",
  "--config.num_steps=2",
  "--config.optim.warmup_steps=1",
  "--config.evals.val.every=0",
  "--config.evals.zeroshot.every=0",
  "--config.best_metric=",
]


def _run(home: str, *args: str, cache_dir: str | None = None) -> str:
  """A script's output, run with `home` as the user's home and JAX_COMPILATION_CACHE_DIR set to
  `cache_dir` (None: unset). conftest's environment keeps every program, however quick to compile
  (JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0), so that what is kept does not depend on the
  machine's speed."""
  env = {**script_env(1), "HOME": home}
  env.pop("JAX_COMPILATION_CACHE_DIR")
  if cache_dir is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  result = subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
  )
  assert result.returncode == 0, result.stderr
  return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(home, workdir): a tiny run's, trained once with the cache in home's ~/.cache/jclip/xla."""
  home, workdir = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("run")
  _run(str(home), *TRAIN, f"--workdir={workdir}")
  return home, workdir


def test_a_second_run_reads_every_program_from_the_users_cache(trained, tmp_path):
  home, _ = trained
  cache = home / ".cache" / "jclip" / "xla"
  kept = set(os.listdir(cache))
  assert len(kept) >= 3, kept  # at least the model's initialisation, the step, the replication
  # Another workdir (not a resume): the same programs, each found, none compiled and kept anew.
  _run(str(home), *TRAIN, f"--workdir={tmp_path}")
  assert set(os.listdir(cache)) == kept


def test_nocompilation_cache_keeps_nothing_even_where_the_environment_asks(trained, tmp_path):
  """eval.py this time (the flag is train.py's and eval.py's), with a home of its own."""
  _, workdir = trained
  home, cache_dir = tmp_path / "home", tmp_path / "asked"
  cache_dir.mkdir()
  _run(
    str(home), "eval.py", f"--workdir={workdir}", "--nocompilation_cache", cache_dir=str(cache_dir)
  )
  assert not os.listdir(cache_dir)
  assert not (home / ".cache" / "jclip" / "xla").exists()


def test_the_environments_cache_folder_is_kept():
  """The tests' own JAX_COMPILATION_CACHE_DIR (conftest.py) stays the cache."""
  assert use_compilation_cache(True) == os.environ["JAX_COMPILATION_CACHE_DIR"]
