"""The methods text of a run, built from the ``__desc__`` of the workflows that actually ran."""

from __future__ import annotations

import json
import re
from importlib import resources

import networkx as nx

_CITATION = re.compile(r"\[@([a-zA-Z0-9_]+(?:; @[a-zA-Z0-9_]+)*)\]")


def _descriptions(workflow) -> list[str]:
    """``__desc__`` of a workflow, then of its sub-workflows in run order, then ``__postdesc__``."""
    from nipype.pipeline.engine import Workflow

    texts = [workflow.__desc__] if getattr(workflow, "__desc__", None) else []
    for node in nx.topological_sort(workflow._graph):
        if isinstance(node, Workflow):
            texts.extend(_descriptions(node))
    if getattr(workflow, "__postdesc__", None):
        texts.append(workflow.__postdesc__)
    return texts


def load_references() -> dict[str, str]:
    """The bibliography that ``[@key]`` citations refer to."""
    text = resources.files("bids_dl").joinpath("data/references.json").read_text(encoding="utf-8")
    return json.loads(text)


def methods_text(workflow) -> tuple[list[str], list[str]]:
    """Paragraphs with numbered citations ``[1]``, and the numbered reference list."""
    references = load_references()
    order: list[str] = []

    def number(match: re.Match) -> str:
        keys = [key.lstrip("@") for key in match.group(1).split("; ")]
        for key in keys:
            if key not in references:
                raise KeyError(f"citation [@{key}] has no entry in data/references.json")
            if key not in order:
                order.append(key)
        return "[" + ", ".join(str(order.index(key) + 1) for key in keys) + "]"

    paragraphs = [_CITATION.sub(number, text) for text in _descriptions(workflow)]
    return paragraphs, [f"[{i + 1}] {references[key]}" for i, key in enumerate(order)]


def methods_markdown(workflow) -> str:
    """The methods as Markdown (``logs/CITATION.md``)."""
    paragraphs, references = methods_text(workflow)
    return "\n\n".join(["# Methods", *paragraphs, "## References", *references]) + "\n"
