"""Nipype interfaces that draw the report figures (one PNG each)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits


class _FigureOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="PNG figure")


class _FigureInterface(SimpleInterface):
    """Draws one PNG into the node's folder; subclasses say what in ``_draw``."""

    output_spec = _FigureOutputSpec
    figure_name = "figure.png"

    def _draw(self, out_file: Path) -> None:
        raise NotImplementedError

    def _run_interface(self, runtime):
        out_file = Path(runtime.cwd) / self.figure_name
        self._draw(out_file)
        self._results["out_file"] = str(out_file)
        return runtime


class _BrainMaskInputSpec(TraitedSpec):
    anat = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)


class BrainMaskFigure(_FigureInterface):
    """Brain-mask contour on the T1w."""

    input_spec = _BrainMaskInputSpec
    figure_name = "brain_mask.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_brain_mask

        plot_brain_mask(self.inputs.anat, self.inputs.brain_mask, out_file)


class _RegistrationInputSpec(TraitedSpec):
    std_anat = File(exists=True, mandatory=True, desc="T1w resampled to the template")
    template_dir = traits.Str(mandatory=True)


class RegistrationFigure(_FigureInterface):
    """T1w in template space with the template's contours."""

    input_spec = _RegistrationInputSpec
    figure_name = "registration.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_registration
        from bids_dl.templates import write_template_files

        template = write_template_files(self.inputs.template_dir)
        plot_registration(
            self.inputs.std_anat, template.brain_mask, [template.gm, template.wm], out_file
        )


class _TissueInputSpec(TraitedSpec):
    anat = File(exists=True, mandatory=True)
    dseg = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)


class TissueFigure(_FigureInterface):
    """Tissue labels over the T1w."""

    input_spec = _TissueInputSpec
    figure_name = "tissues.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_tissues

        plot_tissues(self.inputs.anat, self.inputs.dseg, self.inputs.brain_mask, out_file)


class _StructuresInputSpec(TraitedSpec):
    anat = File(exists=True, mandatory=True)
    aseg = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)


class StructuresFigure(_FigureInterface):
    """Structure labels over the T1w."""

    input_spec = _StructuresInputSpec
    figure_name = "structures.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_structures

        plot_structures(self.inputs.anat, self.inputs.aseg, self.inputs.brain_mask, out_file)
