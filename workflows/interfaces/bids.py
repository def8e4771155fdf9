"""Nipype interface that saves a result as a BIDS derivative (name, sidecar, atomic write),
and the node that runs it."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.pipeline import engine as pe

from bids_dl.derivatives import bids_uri, copy_atomic, derivative_path, write_json_atomic
from bids_dl.workflows.resources import MEM_GB


class _SinkInputSpec(TraitedSpec):
    base_directory = traits.Str(mandatory=True, desc="derivatives root (OUTPUT_DIR)")
    bids_dir = traits.Str(mandatory=True, desc="input BIDS dataset, for the Sources URIs")
    source_file = File(exists=True, mandatory=True, desc="raw file the output derives from")
    in_file = InputMultiObject(File(exists=True), mandatory=True, desc="file(s) to save")
    suffix = traits.Str(mandatory=True)
    datatype = traits.Str("anat", usedefault=True)
    extension = traits.Str(".nii.gz", usedefault=True)
    entities = traits.Dict(traits.Str, traits.Any, usedefault=True, desc="entities to set")
    labels = traits.List(traits.Str, desc="one 'label' entity per in_file (probseg maps)")
    metadata = traits.Dict(usedefault=True, desc="extra sidecar fields")
    metadata_file = File(
        exists=True, desc="a JSON object of sidecar fields made at run time (not Sources)"
    )
    sidecar = traits.Bool(True, usedefault=True, desc="write a JSON sidecar with Sources")
    model = traits.Dict(desc="name, version and sha256 of the model that made the file")
    extra_sources = traits.List(
        traits.Str, usedefault=True, desc="other raw files it derives from (FLAIR...)"
    )


class _SinkOutputSpec(TraitedSpec):
    out_file = OutputMultiObject(File(exists=True))


class DerivativesDataSink(SimpleInterface):
    """Copy results into the derivatives tree under their BIDS names, with JSON sidecars.

    Runs every time (cheap), so a derivative deleted by hand comes back on a cached re-run.
    """

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        base = Path(self.inputs.base_directory)
        in_files = list(self.inputs.in_file)
        labels = self.inputs.labels if isdefined(self.inputs.labels) else [None] * len(in_files)
        if len(labels) != len(in_files):
            raise ValueError(f"{len(labels)} labels for {len(in_files)} files")
        source_uri = bids_uri(self.inputs.source_file, self.inputs.bids_dir, "raw")
        out_files = []
        for in_file, label in zip(in_files, labels, strict=True):
            entities = dict(self.inputs.entities)
            if label is not None:
                entities["label"] = label
            relative = derivative_path(
                self.inputs.source_file,
                self.inputs.suffix,
                self.inputs.datatype,
                self.inputs.extension,
                **entities,
            )
            out_file = copy_atomic(in_file, base / relative)
            if self.inputs.sidecar:
                extra = [
                    bids_uri(f, self.inputs.bids_dir, "raw") for f in self.inputs.extra_sources
                ]
                sidecar = {"Sources": [source_uri, *extra], **self.inputs.metadata}
                if isdefined(self.inputs.metadata_file):  # its Sources name work files
                    made = json.loads(Path(self.inputs.metadata_file).read_text())
                    sidecar.update({k: v for k, v in made.items() if k != "Sources"})
                if isdefined(self.inputs.model) and self.inputs.model:
                    sidecar["DeepLearningModel"] = dict(self.inputs.model)
                if "space" not in entities:
                    # Native-space outputs share the grid of the raw image they come from.
                    sidecar.setdefault("SpatialReference", source_uri)
                write_json_atomic(sidecar, out_file.with_name(_sidecar_name(out_file.name)))
            out_files.append(str(out_file))
        self._results["out_file"] = out_files
        return runtime


def data_dictionary(descriptions: dict, columns) -> dict:
    """The JSON data dictionary of a TSV: each column's Description (and Units) from
    ``descriptions`` (column -> (description, units or None)), for the columns written."""
    return {
        column: {"Description": description} | ({"Units": units} if units else {})
        for column, (description, units) in descriptions.items()
        if column in columns
    }


def _sidecar_name(name: str) -> str:
    return name.split(".")[0] + ".json"


def sink_node(output_dir: str, bids_dir: str, source_file: str, name: str, **kwargs):
    """A :class:`DerivativesDataSink` node that runs in the main process (it only copies)."""
    return pe.Node(
        DerivativesDataSink(
            base_directory=output_dir, bids_dir=bids_dir, source_file=source_file, **kwargs
        ),
        name=name,
        run_without_submitting=True,
        mem_gb=MEM_GB["light"],
    )
