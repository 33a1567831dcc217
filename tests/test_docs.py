"""docs/contrastive_loss.md runs: each ```python block prints exactly the ```output block after it.

The blocks run in order in one namespace, as a reader pasting them into one Python session would,
so the numbers in the document cannot drift from jclip's code. The prose quotes some of those
numbers; the tests check that every number it quotes to three or more decimals is one that a block
printed, that its section references point at sections that exist, and that it picks its devices
in a way that works on any machine (CPU devices named explicitly).
"""

import contextlib
import io
import os
import re

import numpy as np

from conftest import ROOT

DOC = os.path.join(ROOT, "docs", "contrastive_loss.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
HEADING = re.compile(r"^## (\d+)\. ", re.MULTILINE)


def _read():
  with open(DOC) as f:
    return f.read()


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


def _prose(text):
  """The document without its fenced blocks and inline code."""
  return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def test_block_extraction_pairs_code_with_output():
  text = "x\n```python\nprint(1)\n```\n\ntext\n```output\n1\n```\n```bash\nls\n```\n"
  assert _blocks(text) == [("print(1)\n", "1\n")]


def test_every_block_prints_its_output_block():
  import jax

  pairs = _blocks(_read())
  assert len(pairs) >= 30
  namespace = {"__name__": "contrastive_loss_doc"}
  # The document sets NumPy's print options and JAX's default device, which are global: restore
  # them for the other tests.
  default_device = jax.config.jax_default_device
  try:
    with np.printoptions():
      for number, (source, expected) in enumerate(pairs, 1):
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
          exec(compile(source, f"{DOC}:block{number}", "exec"), namespace)  # noqa: S102
        assert _normalise(stdout.getvalue()) == _normalise(expected), (
          f"Block {number} of docs/contrastive_loss.md printed\n{stdout.getvalue()}\ninstead of "
          f"its output block\n{expected}\nUpdate the document if the code changed on purpose."
        )
  finally:
    jax.config.update("jax_default_device", default_device)


def test_numbers_quoted_in_the_prose_were_printed():
  text = _read()
  printed = "\n".join(expected for _, expected in _blocks(text))
  quoted = re.findall(r"(?<![\w.])-?\d+\.\d{3,}", _prose(text))
  assert len(quoted) >= 20
  missing = sorted({number for number in quoted if number not in printed})
  assert not missing, f"docs/contrastive_loss.md quotes numbers that no block prints: {missing}"


def test_sections_are_numbered_in_order_and_references_exist():
  text = _read()
  numbers = [int(number) for number in HEADING.findall(text)]
  assert numbers == list(range(1, len(numbers) + 1))
  prose = _prose(text)
  references = [int(number) for number in re.findall(r"[Ss]ections? (\d+)", prose)]
  references += [int(number) for number in re.findall(r"[Ss]ections \d+ (?:and|to) (\d+)", prose)]
  assert references and all(1 <= number <= len(numbers) for number in references), references


def test_devices_are_chosen_explicitly_on_the_cpu():
  # jax.devices() is the GPU on a machine with one; XLA_FLAGS may already be set by the reader.
  code = "\n".join(source for source, _ in _blocks(_read()))
  assert 'jax.devices("cpu")' in code
  assert "jax.devices()" not in code and "setdefault(\"XLA_FLAGS\"" not in code
  assert code.count("jax.pmap(") == code.count("devices=devices)") > 0
