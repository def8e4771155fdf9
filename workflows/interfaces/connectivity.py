"""Region-to-region connectivity of a template-space BOLD run (``bids_dl.connectivity``): the
denoised mean signal of each sphere of a packaged coordinate atlas and their Ledoit-Wolf
correlation, as the BIDS connectivity proposal names it (``*_relmat.tsv``)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits

from bids_dl.connectivity import ATLASES, write_atlas_outputs


class _AtlasConnectivityInputSpec(TraitedSpec):
    bold_std = File(exists=True, mandatory=True, desc="preprocessed BOLD on the template grid")
    brain_mask = File(exists=True, mandatory=True, desc="its brain mask, same grid")
    confounds_file = File(exists=True, mandatory=True, desc="fMRIPrep-style confounds TSV")
    repetition_time = traits.Float(mandatory=True, desc="seconds")
    atlas = traits.Enum(*ATLASES, usedefault=True, desc="coordinate atlas shipped with nilearn")


class _AtlasConnectivityOutputSpec(TraitedSpec):
    relmat = File(exists=True, desc="Ledoit-Wolf correlation matrix (BEP017 relmat TSV)")
    relmat_json = File(exists=True, desc="its sidecar (RelationshipMeasure, Directed...)")
    timeseries = File(exists=True, desc="denoised sphere signals, one row per volume")
    timeseries_json = File(exists=True, desc="its sidecar (atlas, denoising)")


class AtlasConnectivity(SimpleInterface):
    """Sphere signals and their correlation matrix for one run (nilearn, scikit-learn)."""

    input_spec = _AtlasConnectivityInputSpec
    output_spec = _AtlasConnectivityOutputSpec

    def _run_interface(self, runtime):
        relmat, timeseries = write_atlas_outputs(
            self.inputs.bold_std,
            self.inputs.brain_mask,
            self.inputs.confounds_file,
            self.inputs.repetition_time,
            Path(runtime.cwd) / f"seg-{self.inputs.atlas}",
            self.inputs.atlas,
        )
        self._results.update(
            relmat=str(relmat),
            relmat_json=str(relmat.with_suffix(".json")),
            timeseries=str(timeseries),
            timeseries_json=str(timeseries.with_suffix(".json")),
        )
        return runtime
