"""The bundles that ship in ``bids_dl/models/zoo`` and how to find one by name or path."""

from __future__ import annotations

from pathlib import Path

from bids_dl.models.card import CARD, BundleError, ModelCard, load_card

ZOO = Path(__file__).parent / "zoo"


def shipped_bundles() -> dict[str, Path]:
    """Folder of every shipped bundle, by the folder's name."""
    if not ZOO.is_dir():
        return {}
    return {p.parent.name: p.parent for p in sorted(ZOO.glob(f"*/{CARD}"))}


def find_bundle(name_or_path: str) -> Path:
    """A shipped bundle's folder by name, or any folder given by path."""
    bundles = shipped_bundles()
    if name_or_path in bundles:
        return bundles[name_or_path]
    path = Path(name_or_path)
    if path.is_dir():
        return path
    known = ", ".join(bundles) or "none"
    raise BundleError(f"no bundle {name_or_path!r}: not a folder, nor a shipped name ({known})")


def describe(folder: Path) -> str:
    """One line: name, version, task and the card's headline (its measured accuracy in words),
    or else its single-number metrics."""
    card: ModelCard = load_card(folder)
    metrics = card.metrics.get("headline") or ", ".join(
        f"{k}={v}" for k, v in card.metrics.items() if not isinstance(v, dict)
    )
    return f"{folder.name}: {card.name} {card.version} ({card.task}) {metrics}"
