"""Nipype interfaces that draw the PET report figures (one PNG each; ``_FigureInterface``)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import File, TraitedSpec, isdefined, traits

from bids_dl.workflows.interfaces.reports import _FigureInterface


class _SuvrFigureInputSpec(TraitedSpec):
    suvr = File(exists=True, mandatory=True, desc="SUVR on the T1w grid (measured or imputed)")
    t1w = File(exists=True, mandatory=True, desc="the preprocessed T1w")
    brain_mask = File(exists=True, mandatory=True, desc="the T1w brain mask")
    imputed = traits.Bool(
        False, usedefault=True, desc="a network's prediction from the T1w: marked synthetic"
    )
    reference_region = traits.Str(
        desc="the title's reference region (else the ReferenceRegion of the SUVR's sidecar, "
        "which a work-dir file lacks)"
    )


class SuvrFigure(_FigureInterface):
    """SUVR over the T1w (:func:`bids_dl.reports.pet_figures.plot_suvr`), under a red
    'imputed' banner when it is a network's prediction."""

    input_spec = _SuvrFigureInputSpec
    figure_name = "suvr.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.pet_figures import plot_suvr

        inputs = self.inputs
        region = inputs.reference_region if isdefined(inputs.reference_region) else None
        plot_suvr(inputs.suvr, inputs.t1w, inputs.brain_mask, out_file, inputs.imputed, region)


class _TimeActivityInputSpec(TraitedSpec):
    tacs = File(
        exists=True,
        mandatory=True,
        desc="desc-tacs_timeseries.tsv: frame_start, frame_duration (s), a column per structure",
    )


class TimeActivityFigure(_FigureInterface):
    """Time-activity curves of a dynamic PET series
    (:func:`bids_dl.reports.pet_figures.plot_time_activity`)."""

    input_spec = _TimeActivityInputSpec
    figure_name = "tacs.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.pet_figures import plot_time_activity

        plot_time_activity(self.inputs.tacs, out_file)
