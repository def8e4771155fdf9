"""Nipype interfaces that draw the fMRI report figures (one PNG each; ``_FigureInterface``)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import File, TraitedSpec, isdefined, traits

from bids_dl.workflows.interfaces.reports import _FigureInterface


class _CarpetInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="preprocessed BOLD series, its own grid")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the series' grid")
    confounds_file = File(exists=True, mandatory=True, desc="desc-confounds_timeseries.tsv")
    dseg = File(exists=True, desc="tissue labels on the series' grid (1 GM, 2 WM, 3 CSF)")


class CarpetFigure(_FigureInterface):
    """Carpet plot under FD and std DVARS (:func:`bids_dl.reports.bold_figures.plot_carpet`)."""

    input_spec = _CarpetInputSpec
    figure_name = "carpet.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.bold_figures import plot_carpet

        inputs = self.inputs
        dseg = inputs.dseg if isdefined(inputs.dseg) else None
        plot_carpet(inputs.in_file, inputs.brain_mask, inputs.confounds_file, out_file, dseg)


class _ConnectivityInputSpec(TraitedSpec):
    in_file = File(
        exists=True,
        mandatory=True,
        desc="networks: 4D component maps in template space; matrix: square TSV, region labels "
        "in its header row",
    )
    kind = traits.Enum("networks", "matrix", mandatory=True, desc="which figure")
    title = traits.Str(desc="figure title")


class ConnectivityFigure(_FigureInterface):
    """Network maps (:func:`bids_dl.reports.bold_figures.plot_network_maps`) or a connectivity
    matrix (:func:`bids_dl.reports.bold_figures.plot_connectivity_matrix`), by ``kind``."""

    input_spec = _ConnectivityInputSpec

    def _run_interface(self, runtime):
        self.figure_name = f"{self.inputs.kind}.png"
        return super()._run_interface(runtime)

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports import bold_figures

        plot = {
            "networks": bold_figures.plot_network_maps,
            "matrix": bold_figures.plot_connectivity_matrix,
        }
        title = self.inputs.title if isdefined(self.inputs.title) else None
        plot[self.inputs.kind](self.inputs.in_file, out_file, title)
