"""docs/contrastive_loss.md runs: each ```python block prints exactly the ```output block after it.

The blocks run in order in one namespace, as a reader pasting them into one Python session would,
so the numbers in the document cannot drift from jclip's code.
"""

import contextlib
import io
import os
import re

import numpy as np
from conftest import ROOT

DOC = os.path.join(ROOT, "docs", "contrastive_loss.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)


def _blocks(text):
  """[(python source, expected output)] in document order; every python block needs an output."""
  fences = [(lang, body) for lang, body in FENCE.findall(text) if lang in ("python", "output")]
  pairs = []
  for index, (lang, body) in enumerate(fences):
    if lang == "python":
      following = fences[index + 1] if index + 1 < len(fences) else ("", "")
      assert following[0] == "output", f"python block {len(pairs) + 1} has no ```output after it"
      pairs.append((body, following[1]))
  assert sum(lang == "output" for lang, _ in fences) == len(pairs), "an output block has no code"
  return pairs


def _normalise(text):
  # Editors strip trailing spaces; they are not part of what a reader compares.
  return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def test_block_extraction_pairs_code_with_output():
  text = "x\n```python\nprint(1)\n```\n\ntext\n```output\n1\n```\n```bash\nls\n```\n"
  assert _blocks(text) == [("print(1)\n", "1\n")]


def test_every_block_prints_its_output_block():
  with open(DOC) as f:
    pairs = _blocks(f.read())
  assert len(pairs) >= 10
  namespace = {"__name__": "contrastive_loss_doc"}
  # The document sets NumPy's print options, which are global: restore them for the other tests.
  with np.printoptions():
    for number, (source, expected) in enumerate(pairs, 1):
      stdout = io.StringIO()
      with contextlib.redirect_stdout(stdout):
        exec(compile(source, f"{DOC}:block{number}", "exec"), namespace)  # noqa: S102
      assert _normalise(stdout.getvalue()) == _normalise(expected), (
          f"Block {number} of docs/contrastive_loss.md printed\n{stdout.getvalue()}\ninstead of "
          f"its output block\n{expected}\nUpdate the document if the code changed on purpose.")
