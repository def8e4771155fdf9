"""Nipype interfaces that draw the report figures (one PNG each)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits


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


class _LabelsInputSpec(TraitedSpec):
    anat = File(exists=True, mandatory=True)
    labels = File(exists=True, mandatory=True, desc="tissue (dseg) or structure (aseg) labels")
    brain_mask = File(exists=True, mandatory=True)
    kind = traits.Enum("tissues", "structures", mandatory=True, desc="which colours to use")


class LabelsFigure(_FigureInterface):
    """Tissue or structure labels over the T1w."""

    input_spec = _LabelsInputSpec

    def _run_interface(self, runtime):
        self.figure_name = f"{self.inputs.kind}.png"
        return super()._run_interface(runtime)

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports import figures

        plot = {"tissues": figures.plot_tissues, "structures": figures.plot_structures}
        plot[self.inputs.kind](
            self.inputs.anat, self.inputs.labels, self.inputs.brain_mask, out_file
        )


class _CoregistrationInputSpec(TraitedSpec):
    moving = File(exists=True, mandatory=True, desc="another contrast on the T1w grid")
    reference = File(exists=True, mandatory=True, desc="the preprocessed T1w")
    brain_mask = File(exists=True, mandatory=True)


class CoregistrationFigure(_FigureInterface):
    """A contrast registered to the T1w, under the T1w's brain outline and intensity edges."""

    input_spec = _CoregistrationInputSpec
    figure_name = "coregistration.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_coregistration

        plot_coregistration(
            self.inputs.moving, self.inputs.reference, self.inputs.brain_mask, out_file
        )


class _LesionsFigureInputSpec(TraitedSpec):
    anat = File(exists=True, mandatory=True, desc="T1w or FLAIR on the labels' grid")
    labels = File(exists=True, mandatory=True, desc="desc-tumor_dseg or desc-wmh_mask")
    task = traits.Enum("tumor", "wmh", mandatory=True)


class LesionsFigure(_FigureInterface):
    """Tumour or WMH labels over an anatomical image, volumes in the title."""

    input_spec = _LesionsFigureInputSpec
    figure_name = "lesions.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_lesions

        plot_lesions(self.inputs.anat, self.inputs.labels, self.inputs.task, out_file)


class _FAFigureInputSpec(TraitedSpec):
    fa = File(exists=True, mandatory=True, desc="FA map on the T1w grid")
    brain_mask = File(exists=True, mandatory=True, desc="the T1w brain mask")


class FAFigure(_FigureInterface):
    """FA in grey (0 to 1) with the brain-mask outline."""

    input_spec = _FAFigureInputSpec
    figure_name = "fa.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_fa

        plot_fa(self.inputs.fa, self.inputs.brain_mask, out_file)


class _ColorFAFigureInputSpec(_FAFigureInputSpec):
    v1 = File(exists=True, mandatory=True, desc="principal eigenvector, 4D, world RAS axes")


class ColorFAFigure(_FigureInterface):
    """Colour FA: |V1| * FA, red left-right, green anterior-posterior, blue inferior-superior."""

    input_spec = _ColorFAFigureInputSpec
    figure_name = "colorfa.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_color_fa

        plot_color_fa(self.inputs.fa, self.inputs.v1, self.inputs.brain_mask, out_file)


class _MotionFigureInputSpec(TraitedSpec):
    confounds = File(exists=True, mandatory=True, desc="confounds TSV (fMRIPrep column names)")


class MotionFigure(_FigureInterface):
    """Framewise displacement and the six motion parameters per volume."""

    input_spec = _MotionFigureInputSpec
    figure_name = "motion.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_motion

        plot_motion(self.inputs.confounds, out_file)


class _CBFFigureInputSpec(TraitedSpec):
    cbf = File(exists=True, mandatory=True, desc="CBF map, mL/100 g/min")
    brain_mask = File(
        exists=True, mandatory=True, desc="brain mask (resampled onto the CBF's grid if needed)"
    )
    enhanced = File(exists=True, desc="the network's desc-enhanced_cbf, on the CBF's grid")
    relative = traits.Bool(False, usedefault=True, desc="relative units: the series had no M0")


class CBFFigure(_FigureInterface):
    """CBF cuts in the brain (and the network's enhanced CBF on the same colour scale)."""

    input_spec = _CBFFigureInputSpec
    figure_name = "cbf.png"

    def _draw(self, out_file: Path) -> None:
        from bids_dl.reports.figures import plot_cbf

        plot_cbf(
            self.inputs.cbf,
            self.inputs.brain_mask,
            out_file,
            enhanced_file=self.inputs.enhanced if isdefined(self.inputs.enhanced) else None,
            relative=self.inputs.relative,
        )
