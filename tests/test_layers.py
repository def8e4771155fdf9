"""The layering of the package: bids_dl.models stands alone, and reading a card needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "models"
#: What a module under models/ may not import: the rest of the application, the workflow
#: engine, BIDS queries and the command-line toolkit.
FORBIDDEN = ("nipype", "bids", "click")


def _imported_modules(path: Path) -> list[str]:
    """Every module a source file imports, at any depth (lazy imports inside functions too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _violation(module: str) -> bool:
    top = module.split(".")[0]
    if top == "bids_dl":
        return module != "bids_dl.models" and not module.startswith("bids_dl.models.")
    return top in FORBIDDEN


def test_models_import_nothing_from_the_application_nor_nipype_pybids_or_click():
    files = sorted(MODELS.rglob("*.py"))
    assert files
    violations = [
        f"{path.relative_to(MODELS.parent)}: {module}"
        for path in files
        for module in _imported_modules(path)
        if _violation(module)
    ]
    assert not violations, "bids_dl.models must stand alone:\n" + "\n".join(violations)


def test_the_rule_tells_a_violation_from_an_allowed_import():
    assert _violation("bids_dl.images") and _violation("bids_dl")
    assert (
        _violation("nipype.pipeline.engine") and _violation("bids.layout") and _violation("click")
    )
    assert not _violation("bids_dl.models.card") and not _violation("bids_dl.models")
    assert not _violation("bidsschematools") and not _violation("torch")


def test_reading_a_card_and_the_registry_does_not_import_torch():
    code = (
        "import sys\n"
        "import bids_dl.models.card, bids_dl.models.registry\n"
        "from bids_dl.models.registry import describe, shipped_bundles\n"
        "for folder in shipped_bundles().values():\n"
        "    describe(folder)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_building_the_workflows_does_not_import_torch():
    """torch loads in the nodes that run a model, not in the process that builds the graph."""
    code = (
        "import sys\n"
        "import bids_dl.workflows.base, bids_dl.workflows.lesion\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
