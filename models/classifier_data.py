"""What a group-level classifier learns from: one row per participant, its features and label.

A :class:`Cohort` is plain arrays, so the estimators, the nested cross-validation and the
bundles (``classifier_*`` modules) know nothing of BIDS: the application builds a cohort from a
derivatives folder and a ``participants.tsv`` (``bids_dl.classify_features``), a benchmark or a
notebook from anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Cohort:
    """Participants with a label, their features and the groups that folds keep together.

    ``tabular`` (n, p) holds named numeric features (regional volumes over ICV, lesion loads,
    covariates such as age...), finite everywhere; ``images`` (n, X, Y, Z) holds template-space
    maps on one grid (a lesion mask, GM probability...) for a convolutional network; either
    may be ``None``, not both. ``target`` is 0/1 for a classification (1: ``class_names[1]``)
    and a float for a regression. ``groups`` names the unit that no fold may split: the
    participant, or the label map a synthetic participant was drawn from.
    """

    participant_ids: tuple[str, ...]
    target: np.ndarray
    task: Task
    groups: np.ndarray
    tabular: np.ndarray | None = None
    feature_names: tuple[str, ...] = ()
    images: np.ndarray | None = None
    image_names: tuple[str, ...] = ()
    target_name: str = "target"
    class_names: tuple[str, ...] = ()
    #: why participants were left out, and how many: {"no label": 12, ...}
    left_out: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.participant_ids)
        if self.tabular is None and self.images is None:
            raise ValueError("a cohort needs tabular features, image features or both")
        for name, values in (("target", self.target), ("groups", self.groups)):
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} rows for {n} participants")
        if self.tabular is not None:
            if self.tabular.shape != (n, len(self.feature_names)):
                raise ValueError(
                    f"tabular features {self.tabular.shape} do not match {n} participants x "
                    f"{len(self.feature_names)} names"
                )
            if not np.isfinite(self.tabular).all():
                raise ValueError("tabular features must be finite")
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"images have {len(self.images)} rows for {n} participants")
        if self.task == "classification" and set(np.unique(self.target)) - {0, 1}:
            raise ValueError("a classification target is 0 or 1")

    def __len__(self) -> int:
        return len(self.participant_ids)

    def subset(self, rows: np.ndarray) -> Cohort:
        """The participants at ``rows`` (indices), with the same names."""
        rows = np.asarray(rows)
        return Cohort(
            participant_ids=tuple(self.participant_ids[i] for i in rows),
            target=self.target[rows],
            task=self.task,
            groups=self.groups[rows],
            tabular=None if self.tabular is None else self.tabular[rows],
            feature_names=self.feature_names,
            images=None if self.images is None else self.images[rows],
            image_names=self.image_names,
            target_name=self.target_name,
            class_names=self.class_names,
            left_out=self.left_out,
        )
