"""docs/course_path.ipynb: stored without outputs, valid, and run cell by cell (a few training steps
in place of its NUM_STEPS), so that it cannot drift from the library."""

import json
import os

import matplotlib
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "docs", "course_path.ipynb")


@pytest.fixture(scope="module")
def notebook():
  with open(NOTEBOOK) as f:
    return json.load(f)


def _code_cells(notebook):
  return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_the_notebook_is_valid_and_stored_without_outputs(notebook):
  nbformat.validate(nbformat.reads(json.dumps(notebook), as_version=4))
  for cell in _code_cells(notebook):
    assert cell["outputs"] == [] and cell["execution_count"] is None, "".join(cell["source"])
  parameters = [c for c in _code_cells(notebook) if "parameters" in c["metadata"].get("tags", ())]
  assert len(parameters) == 1, "one cell tagged 'parameters' holds what the test replaces"


def test_every_cell_runs(notebook, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a notebook runs from its own folder: nothing may need the repo's
  matplotlib.use("Agg")
  namespace = {}
  for cell in _code_cells(notebook):
    source = "".join(cell["source"])
    assert not any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()), (
      "IPython magics and shell lines do not run outside Jupyter"
    )
    if "parameters" in cell["metadata"].get("tags", ()):
      source = f"WORKDIR = {str(tmp_path / 'run')!r}\nNUM_STEPS = 3\n"
    exec(compile(source, NOTEBOOK, "exec"), namespace)
  # What the cells computed is what they claim to show.
  assert namespace["model"].step == 3
  assert namespace["probs_NC"].shape == (350, 5) and 0 <= namespace["accuracy"] <= 1
  assert namespace["sim_RR"].shape == (8, 8)
