"""The house's floors: every import inside jclip/ flows down, never up or sideways, with no cycle.

    basement    jclip.slug, jclip.pixels, jclip.errors,  import nothing of jclip's
                jclip.batching
    ground      jclip.models, jclip.losses               + jclip.pixels (what an input image is)
    data        jclip.data                               + the basement (no model)
    config      jclip.config, jclip.tasks                + models, losses, jclip.errors (tasks
                                                           also reads config)
    runs        jclip.runs (checkpoints, tokenizers,     + data, config, tasks
                metric logs: what a run leaves behind)
    evaluation  jclip.evaluation                         + runs (never training)
    training    jclip.training                           + evaluation (evaluators in the loop)
    scripts     jclip.cli                                + models, config, runs, jclip.errors
    api         jclip.api (jclip.load, jclip.Model)      + evaluation and below (never training)
    collection  jclip.collection (an index of a folder   + jclip.api and what it may import
                of images: search, duplicates)

The ground imports not even jclip.errors: models/ and losses.py stand alone, so their few errors for
bad input (pretrained weights) are ValueErrors that jclip.cli names one by one.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jclip"

# What each part of the package may import of jclip (besides itself).
ALLOWED = {
  "jclip.slug": (),
  "jclip.pixels": (),
  "jclip.errors": (),
  "jclip.batching": (),
  "jclip.models": ("jclip.pixels",),
  "jclip.losses": (),
  "jclip.data": ("jclip.slug", "jclip.pixels", "jclip.errors"),
  "jclip.config": ("jclip.models", "jclip.losses", "jclip.errors"),
  "jclip.tasks": ("jclip.models", "jclip.losses", "jclip.config", "jclip.errors"),
  "jclip.runs": (
    "jclip.models",
    "jclip.data",
    "jclip.config",
    "jclip.tasks",
    "jclip.slug",
    "jclip.pixels",
    "jclip.errors",
    "jclip.batching",
  ),
  "jclip.evaluation": (
    "jclip.models",
    "jclip.data",
    "jclip.config",
    "jclip.tasks",
    "jclip.runs",
    "jclip.slug",
    "jclip.pixels",
    "jclip.errors",
    "jclip.batching",
  ),
  "jclip.training": (
    "jclip.models",
    "jclip.losses",
    "jclip.data",
    "jclip.config",
    "jclip.tasks",
    "jclip.runs",
    "jclip.evaluation",
    "jclip.slug",
    "jclip.pixels",
    "jclip.errors",
    "jclip.batching",
  ),
  "jclip.cli": ("jclip.models", "jclip.config", "jclip.runs", "jclip.errors"),
  # A trained model from Python (jclip.load): restoring, embedding, zero-shot; never training.
  "jclip.api": (
    "jclip.models",
    "jclip.data",
    "jclip.config",
    "jclip.tasks",
    "jclip.runs",
    "jclip.evaluation",
    "jclip.slug",
    "jclip.pixels",
    "jclip.errors",
    "jclip.batching",
  ),
  # A folder of one's own images indexed, searched and cleaned with a jclip.Model.
  "jclip.collection": (
    "jclip.api",
    "jclip.models",
    "jclip.data",
    "jclip.config",
    "jclip.tasks",
    "jclip.runs",
    "jclip.evaluation",
    "jclip.slug",
    "jclip.pixels",
    "jclip.errors",
    "jclip.batching",
  ),
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _jclip_imports(path: pathlib.Path) -> set[str]:
  """Every jclip module or package that `path` imports, at any depth (function bodies too)."""
  name = _module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: anchored at this module's package
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from jclip import tasks` imports the module jclip.tasks; `from jclip.data.x import f`,
      # the module jclip.data.x.
      found.update(
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
        for alias in node.names
      )
  return {m for m in found if m == "jclip" or m.startswith("jclip.")}


def _part(module: str) -> str:
  """The key of ALLOWED that a module belongs to."""
  for part in ALLOWED:
    if module == part or module.startswith(part + "."):
      return part
  return module


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_floor():
  unplaced = sorted(m for m in MODULES if m != "jclip" and _part(m) not in ALLOWED)
  assert not unplaced, f"Place these modules on a floor (ALLOWED above): {unplaced}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "jclip"))
def test_imports_flow_down(module):
  part = _part(module)
  wrong = sorted(
    target
    for target in _jclip_imports(MODULES[module])
    if _part(target) != part and _part(target) not in ALLOWED[part]
  )
  assert not wrong, (
    f"{MODULES[module].relative_to(PACKAGE.parent)} imports {wrong}; "
    f"{part} may import only {ALLOWED[part] or 'nothing of jclip'}."
  )


def test_no_import_cycles():
  graph = {}
  for module, path in MODULES.items():
    targets = set()
    for target in _jclip_imports(path):
      while target and target not in MODULES:  # `from jclip.data import folder` -> the module
        target = target.rpartition(".")[0]
      if target and target != module:
        targets.add(target)
    graph[module] = targets
  visiting, done, cycles = [], set(), []

  def visit(module):
    if module in visiting:
      cycles.append(visiting[visiting.index(module) :] + [module])
      return
    if module in done:
      return
    visiting.append(module)
    for target in sorted(graph.get(module, ())):
      visit(target)
    visiting.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
