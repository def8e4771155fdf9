"""Lesion analyses: glioma sub-regions and white-matter hyperintensities on the T1w grid."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.models.card import load_card
from bids_dl.workflows.interfaces.ants import CoregisterToT1w
from bids_dl.workflows.interfaces.deep_learning import ModelLesions
from bids_dl.workflows.resources import MEM_GB

#: The contrasts a lesion workflow can use beside the T1w (input names of ``SubjectInputs``).
LESION_CONTRASTS = ("flair", "t1ce", "t2w")
CONTRAST_NAMES = {"flair": "FLAIR", "t1ce": "contrast-enhanced T1w", "t2w": "T2w"}


def init_lesion_wf(
    *,
    contrasts: list[str],
    reference_contrast: str = "T1w",
    tumor_bundle: str | None,
    wmh_bundle: str | None,
    omp_nthreads: int,
    device: str = "auto",
    name: str = "lesion_wf",
) -> pe.Workflow:
    """Coregister the subject's other contrasts to the T1w, then segment lesions.

    Parameters
    ----------
    contrasts
        which of ``flair``, ``t1ce``, ``t2w`` the subject has (each gets a rigid registration)
    reference_contrast
        the model channel the preprocessed reference fills: ``T1w``, or ``T1ce`` for a
        session whose only T1-weighted image is contrast-enhanced (its T1w channel stays empty)
    tumor_bundle, wmh_bundle
        model bundles of the analyses to run (None: not run)

    Inputs
    ------
    t1w_preproc, brain_mask
        the preprocessed T1w and its brain mask (the output grid)
    flair, t1ce, t2w
        the raw images of ``contrasts``

    Outputs
    -------
    flair_t1w, t1ce_t1w, t2w_t1w
        each registered contrast on the T1w grid (for the report; undefined when absent)
    tumor_dseg, tumor_model, wmh_mask, wmh_model
        labels and model identities of the analyses that ran
    measures
        a list of dicts (volumes, lesion count) for the subject's measures table
    """
    workflow = pe.Workflow(name=name)
    if contrasts:
        workflow.__desc__ = (
            "The other contrasts of the participant ({}) were rigidly registered to the "
            "bias-corrected T1w with ANTs [@ants] (mutual information) and resampled onto its "
            "grid."
        ).format(", ".join(CONTRAST_NAMES[c] for c in contrasts))
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["t1w_preproc", "brain_mask", *LESION_CONTRASTS]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                *(f"{c}_t1w" for c in LESION_CONTRASTS),
                *("tumor_dseg", "tumor_model", "wmh_mask", "wmh_model", "measures"),
            ]
        ),
        name="outputnode",
    )
    coregistered = {}
    for contrast in contrasts:
        node = pe.Node(
            CoregisterToT1w(num_threads=omp_nthreads),
            name=f"coregister_{contrast}",
            n_procs=omp_nthreads,
            mem_gb=MEM_GB["coregister"],
        )
        workflow.connect([
            (inputnode, node, [(contrast, "in_file"), ("t1w_preproc", "reference")]),
        ])  # fmt: skip
        workflow.connect(node, "out_file", outputnode, f"{contrast}_t1w")
        coregistered[contrast] = node

    analyses = [(task, bundle) for task, bundle in (("tumor", tumor_bundle), ("wmh", wmh_bundle))
                if bundle is not None]  # fmt: skip
    merge_measures = pe.Node(
        niu.Merge(max(len(analyses), 1)), name="merge_measures", mem_gb=MEM_GB["light"]
    )
    descriptions = {
        "tumor": "Glioma sub-regions (necrotic and non-enhancing core, edema, enhancing tumour) "
        "were segmented with bids_dl's tumour model",
        "wmh": "White-matter hyperintensities were segmented with bids_dl's WMH model",
    }
    sentences = []
    for position, (task, bundle) in enumerate(analyses, start=1):
        node = pe.Node(
            ModelLesions(
                task=task,
                bundle=bundle,
                reference_contrast=reference_contrast,
                device=device,
                num_threads=omp_nthreads,
            ),  # fmt: skip
            name=f"{task}_model",
            n_procs=omp_nthreads,
            mem_gb=MEM_GB["lesion_model"],
        )
        workflow.connect([
            (inputnode, node, [("t1w_preproc", "t1w"), ("brain_mask", "brain_mask")]),
            (node, merge_measures, [("measures", f"in{position}")]),
        ])  # fmt: skip
        for contrast, registration in coregistered.items():
            workflow.connect([
                (registration, node, [("out_file", contrast),
                                      ("coverage_file", f"{contrast}_coverage")]),
            ])  # fmt: skip
        output = "tumor_dseg" if task == "tumor" else "wmh_mask"
        workflow.connect([
            (node, outputnode, [("out_file", output), ("model", f"{task}_model")]),
        ])  # fmt: skip
        card = load_card(bundle)
        members = card.architecture.get("args", {}).get("members")
        network = (
            f"an ensemble of 3D U-Nets ({members}, probabilities averaged)"
            if members
            else "a 3D U-Net"
        )
        sentences.append(
            f"{descriptions[task]} ({card.name} {card.version}, {network}; its model card "
            "gives the training data and the accuracy measured on simulated and real cases)."
        )
    workflow.connect(merge_measures, "out", outputnode, "measures")
    workflow.__postdesc__ = " ".join(sentences)
    return workflow
