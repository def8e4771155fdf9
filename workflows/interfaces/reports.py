"""Nipype interfaces that draw the report figures (one PNG each)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits


class _FigureOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="PNG figure")


class _BrainMaskInputSpec(TraitedSpec):
    anat = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)


class BrainMaskFigure(SimpleInterface):
    """Brain-mask contour on the T1w."""

    input_spec = _BrainMaskInputSpec
    output_spec = _FigureOutputSpec

    def _run_interface(self, runtime):
        from bids_dl.reports.figures import plot_brain_mask

        out_file = Path(runtime.cwd) / "brain_mask.png"
        plot_brain_mask(self.inputs.anat, self.inputs.brain_mask, out_file)
        self._results["out_file"] = str(out_file)
        return runtime


class _RegistrationInputSpec(TraitedSpec):
    std_anat = File(exists=True, mandatory=True, desc="T1w resampled to the template")
    template_dir = traits.Str(mandatory=True)


class RegistrationFigure(SimpleInterface):
    """T1w in template space with the template's contours."""

    input_spec = _RegistrationInputSpec
    output_spec = _FigureOutputSpec

    def _run_interface(self, runtime):
        from bids_dl.reports.figures import plot_registration
        from bids_dl.templates import write_template_files

        template = write_template_files(self.inputs.template_dir)
        out_file = Path(runtime.cwd) / "registration.png"
        plot_registration(
            self.inputs.std_anat, template.brain_mask, [template.gm, template.wm], out_file
        )
        self._results["out_file"] = str(out_file)
        return runtime


class _TissueInputSpec(TraitedSpec):
    anat = File(exists=True, mandatory=True)
    dseg = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)


class TissueFigure(SimpleInterface):
    """Tissue labels over the T1w."""

    input_spec = _TissueInputSpec
    output_spec = _FigureOutputSpec

    def _run_interface(self, runtime):
        from bids_dl.reports.figures import plot_tissues

        out_file = Path(runtime.cwd) / "tissues.png"
        plot_tissues(self.inputs.anat, self.inputs.dseg, self.inputs.brain_mask, out_file)
        self._results["out_file"] = str(out_file)
        return runtime
