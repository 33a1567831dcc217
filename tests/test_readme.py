"""The README's Python example (section "Use it from Python") runs as written, on a tiny trained
model in place of the quickstart's and in a folder of the test's own."""

import os
import re

import numpy as np

from conftest import ROOT

SECTION = "## Use it from Python"


def _python_blocks(section: str) -> list[str]:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  start = text.index(section)
  body = text[start : text.index("\n## ", start + len(section))]
  return re.findall(r"^```python\n(.*?)^```", body, re.DOTALL | re.MULTILINE)


def test_the_python_example_runs(tiny_workdir, tmp_path, capsys):
  (source,) = _python_blocks(SECTION)
  assert '"/tmp/jclip_quickstart"' in source and "/tmp/shapes" in source
  source = source.replace('"/tmp/jclip_quickstart"', repr(tiny_workdir))
  source = source.replace("/tmp/shapes", str(tmp_path / "shapes"))
  with np.printoptions():
    exec(compile(source, "README.md", "exec"), {})
  out = capsys.readouterr().out
  assert "(4, 16) (2, 16) float32" in out  # the tiny model's embeddings: 4 images, 2 texts
  assert len(os.listdir(tmp_path / "shapes")) == 4
