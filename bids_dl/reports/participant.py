"""The per-participant HTML report: figures, measures, methods and errors (jinja2)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from bids_dl import __version__
from bids_dl.derivatives import write_text_atomic

#: The figures of the report, in display order: (desc entity, title, caption); each is drawn
#: over the T1w (``_T1w.png``), some also or only over the FLAIR or T2w (``_FLAIR.png``...);
#: the last ones, and ``coreg`` too, for each diffusion series (``_dwi.png``, named after the
#: raw DWI file), shown in the report's Diffusion section (``FIGURE_GROUPS``).
ANAT_FIGURES = (
    ("brain", "Brain mask", "Contour of the brain mask (red) on the bias-corrected T1w."),
    (
        "registration",
        "Template registration",
        "The T1w resampled to MNI152NLin2009aSym, with the template's brain outline (red), "
        "grey-matter (yellow) and white-matter (cyan) boundaries on top.",
    ),
    ("tissues", "Tissue segmentation", "Grey matter (blue), white matter (green) and CSF (red)."),
    (
        "structures",
        "Brain structures",
        "The structure segmentation in FreeSurfer's colours (cortex red, white matter white, "
        "ventricles purple, thalamus green, caudate light blue, putamen pink, hippocampus "
        "yellow...); names and colours are in desc-aseg_dseg.tsv.",
    ),
    (
        "coreg",
        "Coregistration",
        "Each other contrast (FLAIR, contrast-enhanced T1w, T2w) and the b=0 reference of each "
        "diffusion series after rigid registration to the T1w, with the T1w's brain outline "
        "(red) and its ventricle and sulcal edges (cyan) on top: the anatomy should follow the "
        "lines.",
    ),
    (
        "tumor",
        "Tumour segmentation",
        "Necrotic and non-enhancing tumour core (red), edema (green) and enhancing tumour "
        "(yellow), over the bias-corrected T1w (the contrast-enhanced T1w where the session "
        "has no other) and the FLAIR registered to it; volumes in the title. Cuts go through "
        "the tumour.",
    ),
    (
        "wmh",
        "White-matter hyperintensities",
        "Lesions (magenta) over the FLAIR registered to the T1w; total volume in the title. "
        "Cuts go through the lesions.",
    ),
    (
        "fa",
        "Fractional anisotropy",
        "FA of the diffusion tensor in the T1w space, from 0 (black) to 1 (white), with the "
        "T1w's brain-mask outline (red): white-matter tracts should stand out bright.",
    ),
    (
        "colorfa",
        "Colour FA",
        "The principal diffusion direction, coloured by axis (red left-right, green "
        "anterior-posterior, blue superior-inferior) and weighted by FA; the subject's left "
        "is on the image's left, as in the other figures. The corpus callosum should be red, "
        "the cingulum green and the corticospinal tracts blue.",
    ),
    (
        "motion",
        "Head motion",
        "Framewise displacement (top; Power et al. 2012: the sum of the absolute changes of the "
        "six rigid motion parameters from one volume to the next, rotations counted as arc "
        "length on a 50 mm sphere) and the motion parameters themselves (bottom: translations "
        "in mm, rotations in degrees), per volume; grey lines mark the b=0 volumes. For "
        "diffusion-weighted volumes the parameters are the rigid part of the affine "
        "eddy-current registration: a shift along the phase-encoding axis is partly eddy "
        "current, so FD there overstates head motion.",
    ),
)

#: The figures of each ASL series (``_asl.png``, named after the raw ASL file), in the
#: report's Perfusion section: (desc entity, title, caption).
PERFUSION_FIGURES = (
    (
        "cbf",
        "Cerebral blood flow",
        "CBF of the series in its brain mask: axial cuts from the bottom of the brain up, then "
        "coronal and sagittal cuts, each voxel at its true size (thick slices look blocky), "
        "the subject's left on the image's left, the brain outline in grey and negative CBF in "
        "blue; the scale runs from 0 to the 99th percentile of the measured CBF in the brain "
        "(relative units where the series had no M0 scan). Grey matter should be brighter than "
        "white matter, about 40-80 mL/100 g/min in healthy adult grey matter, with no large "
        "negative areas. A bright or negative rim along the brain's edge points to motion "
        "between label and control volumes, a map negative almost everywhere to label and "
        "control swapped, bright dots along the large arteries to label still in transit at the "
        "post-labelling delay. Where a network enhanced the map, its output is shown below on "
        "the same scale: a prediction from the measured data, not a measurement, which should "
        "keep the measured map's pattern.",
    ),
    (
        "coreg",
        "Coregistration",
        "The ASL series' reference (its mean control volume, else the M0 scan) after rigid "
        "registration to the T1w, with the T1w's brain outline (red) and its ventricle and "
        "sulcal edges (cyan) on top: the anatomy should follow the lines.",
    ),
    (
        "motion",
        "Head motion",
        "Framewise displacement (top; Power et al. 2012: the sum of the absolute changes of "
        "the six rigid motion parameters from one volume to the next, rotations counted as arc "
        "length on a 50 mm sphere) and the motion parameters themselves (bottom: translations "
        "in mm, rotations in degrees), per volume of the ASL series. Label and control volumes "
        "differ in intensity, so part of a regular zig-zag can be the labelling, not the head.",
    ),
)

#: The figures of each BOLD run (``_bold.png``, named after the raw run), in the report's
#: Functional section: (desc entity, title, caption).
FUNCTIONAL_FIGURES = (
    (
        "carpet",
        "Carpet plot",
        "Every brain voxel of the motion-corrected run (rows, grouped by tissue; z-scored "
        "and detrended) over time (columns), under framewise displacement (mm, dashed line at "
        "0.5) and standardised DVARS (dashed line at 1.5); non-steady-state volumes are "
        "shaded. Motion shows as vertical stripes through every tissue at the FD and DVARS "
        "peaks; slow drifts and bands confined to white matter or CSF are what the aCompCor "
        "and cosine confounds remove.",
    ),
    (
        "coreg",
        "Coregistration",
        "The run's reference volume after rigid registration to the T1w, with the T1w's brain "
        "outline (red) and its ventricle and sulcal edges (cyan) on top: the anatomy should "
        "follow the lines. Susceptibility distortion was not corrected, so frontal and "
        "temporal areas near air may stretch or drop out.",
    ),
    (
        "motion",
        "Head motion",
        "Framewise displacement (top; Power et al. 2012: the sum of the absolute changes of "
        "the six rigid motion parameters from one volume to the next, rotations counted as arc "
        "length on a 50 mm sphere) and the motion parameters themselves (bottom: translations "
        "in mm, rotations in degrees), per volume of the run. Volumes with FD above 0.5 mm are "
        "listed as motion_outlier confounds.",
    ),
    (
        "connectivity",
        "Connectivity",
        "Ledoit-Wolf correlation between the mean signals of the Power 2011 atlas's 5 mm "
        "spheres in the template-space run after confound regression (red positive, blue "
        "negative). Strong uniform positive correlation everywhere points to motion or global "
        "signal left in the data; blocks along the diagonal are the atlas's networks.",
    ),
)

#: The figures of each PET series (``_pet.png``, named after the raw PET file without
#: ``_pet.nii.gz``; an imputed PET's after the participant and session), in the report's PET
#: section: (desc entity, title, caption).
PET_FIGURES = (
    (
        "imputed",
        "Imputed PET (synthetic)",
        "SYNTHETIC, NOT A MEASUREMENT. No PET was acquired for this participant or session: "
        "a deep network predicted this FDG-like SUVR image from the T1w alone, and the network "
        "was trained on SIMULATED data, so it shows what the network learnt to expect from the "
        "anatomy, not this participant's uptake: read no finding (a hypometabolic area, an "
        "asymmetry) from it. Drawn like a measured SUVR: colour over the T1w in grey.",
    ),
    (
        "suvr",
        "Standardised uptake value ratio",
        "The PET on the T1w grid, divided by its mean in the reference region named in the "
        "title (that region is about 1), in colour over the T1w in grey: axial cuts from the "
        "bottom of the brain up, then coronal and sagittal cuts, the subject's left on the "
        "image's left, the brain outline in grey; the scale runs from 0 to 2, or to the 99th "
        "percentile in the brain where that is higher. With FDG, cortex, striatum and thalamus "
        "should be brighter than white matter and left and right alike; uptake straddling the "
        "brain outline points to a misregistration (see the coregistration figure).",
    ),
    (
        "coreg",
        "Coregistration",
        "The static PET after rigid registration to the T1w, with the T1w's brain outline "
        "(red) and its ventricle and sulcal edges (cyan) on top: the cortical uptake should "
        "lie inside the outline and the ventricles stay dark. PET's resolution is a few mm, "
        "so its edges are blurred.",
    ),
    (
        "motion",
        "Head motion",
        "Framewise displacement (top; Power et al. 2012: the sum of the absolute changes of "
        "the six rigid motion parameters from one frame to the next, rotations counted as arc "
        "length on a 50 mm sphere) and the motion parameters themselves (bottom: translations "
        "in mm, rotations in degrees), per frame of the dynamic series. Frames are counted, "
        "not timed, and the early short frames hold few counts: their estimates are noisier.",
    ),
    (
        "tacs",
        "Time-activity curves",
        "Mean activity per frame in cortex, cerebellar cortex, cerebral white matter, putamen, "
        "thalamus and brain stem (where present; left solid, right dashed, in the colours of "
        "the structures figure) against the frame's mid-time. With FDG the curves rise "
        "steeply in the first minutes and then slowly, cortex above white matter; a step "
        "shared by every curve points to motion between frames.",
    ),
)

#: Suffixes of the figure files: the image each figure is drawn over or about.
FIGURE_SUFFIXES = ("T1w", "FLAIR", "T2w", "dwi")

#: Which figure list captions which suffixes.
FIGURE_SETS = (
    (ANAT_FIGURES, FIGURE_SUFFIXES),
    (PERFUSION_FIGURES, ("asl",)),
    (FUNCTIONAL_FIGURES, ("bold",)),
    (PET_FIGURES, ("pet",)),
)

#: Sections of the report: (HTML id, heading, suffixes of the figures they show).
FIGURE_GROUPS = (
    ("anatomical", "Anatomical", ("T1w", "FLAIR", "T2w")),
    ("diffusion", "Diffusion", ("dwi",)),
    ("perfusion", "Perfusion", ("asl",)),
    ("functional", "Functional", ("bold",)),
    ("pet", "PET", ("pet",)),
)

#: The order of each diffusion series' figures (desc entities) in the Diffusion section.
DIFFUSION_ORDER = ("fa", "colorfa", "coreg", "motion")
#: The order of each ASL series' figures in the Perfusion section.
PERFUSION_ORDER = ("cbf", "coreg", "motion")
#: The order of each BOLD run's figures in the Functional section.
FUNCTIONAL_ORDER = ("carpet", "coreg", "motion", "connectivity")
#: The order of each PET series' figures in the PET section.
PET_ORDER = ("imputed", "suvr", "coreg", "motion", "tacs")
#: Per series suffix: the order of its figures (these sections show series by series).
SERIES_ORDER = {
    "dwi": DIFFUSION_ORDER,
    "asl": PERFUSION_ORDER,
    "bold": FUNCTIONAL_ORDER,
    "pet": PET_ORDER,
}
#: The figures (desc entities) of a network's prediction where no image was measured: the
#: report marks them synthetic, in red.
SYNTHETIC_FIGURES = ("imputed",)

#: The quality table of each ASL series, ``sub-X/[ses-Y/]perf/<series>_<QUALITY_SUFFIX>``, with
#: ``<series>`` the figures' name before ``_desc-``.
QUALITY_SUFFIX = "desc-qualitycontrol_cbf.tsv"
#: The columns of it shown under each ASL series: (column, heading, decimals).
QUALITY_COLUMNS = (
    ("qei_cbf", "QEI", 2),
    ("mean_gm_cbf", "mean GM CBF", 1),
    ("mean_wm_cbf", "mean WM CBF", 1),
    ("ratio_gm_wm_cbf", "GM/WM ratio", 2),
    ("percentage_negative_cbf", "negative CBF in GM (%)", 1),
    ("percentage_implausible_cbf_brain", "brain above 150 (%)", 1),
    ("mean_fd", "mean FD (mm)", 2),
)


def template_environment() -> jinja2.Environment:
    """Jinja2 environment over the templates installed in ``bids_dl/data/templates``."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("bids_dl", "data/templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )


def read_measures(path: Path) -> dict[str, str]:
    """The single row of a per-subject measures TSV."""
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return rows[0] if rows else {}


def find_crash_files(output_dir: Path, subject: str) -> list[Path]:
    """Crash files that nipype left for this subject, newest run last."""
    return sorted((output_dir / f"sub-{subject}" / "log").glob("*/crash-*"))


def latest_resources(output_dir: Path, subject: str) -> dict | None:
    """The newest run's ``resources.tsv`` of a subject (``--resource-monitor``), if any."""
    from bids_dl.execution import MONITOR_PERIOD_S, read_resource_table

    tables = sorted((output_dir / f"sub-{subject}" / "log").glob("*/resources.tsv"))
    if not tables:
        return None
    rows = read_resource_table(tables[-1])
    return {"run": tables[-1].parent.name, "period": MONITOR_PERIOD_S, "rows": rows}


def _figure_desc(path: Path) -> str:
    """A figure's kind: the desc entity of ``<series>_desc-<desc>_<suffix>.png``."""
    return path.name.partition("_desc-")[2].rsplit("_", 1)[0]


def _series_order(path: Path, order: tuple[str, ...]) -> tuple[str, int]:
    """Sort key of a series' figure: its series (the name before ``_desc-``), then its kind
    in ``order``, so that each series' figures stay together."""
    desc = _figure_desc(path)
    return path.name.partition("_desc-")[0], order.index(desc) if desc in order else len(order)


def _format_quality(value: str | None, decimals: int) -> str:
    try:
        return f"{float(value):.{decimals}f}"
    except (TypeError, ValueError):
        return value or "n/a"


def read_quality(output_dir: Path, subject: str, series: str) -> list[dict] | None:
    """The ``QUALITY_COLUMNS`` of a series' quality table as (``heading``, ``value``) dicts,
    values rounded and ``n/a`` kept; None where the series has no table."""
    tables = sorted(Path(output_dir, f"sub-{subject}").glob(f"**/perf/{series}_{QUALITY_SUFFIX}"))
    if not tables:
        return None
    row = read_measures(tables[0])
    return [
        {"heading": heading, "value": _format_quality(row.get(column), decimals)}
        for column, heading, decimals in QUALITY_COLUMNS
    ]


def _figure_entry(output_dir: Path, path: Path, title: str, caption: str) -> dict:
    return {
        "path": path.relative_to(output_dir).as_posix(),
        "title": title,
        "caption": caption,
        "synthetic": _figure_desc(path) in SYNTHETIC_FIGURES,
    }


def _perfusion_series(output_dir: Path, subject: str, members: list) -> list[dict]:
    """The ASL figures grouped by series: ``name`` (the raw file's, e.g. ``sub-01_asl``),
    ``figures`` and ``quality`` (``read_quality``)."""
    series: dict[str, list[dict]] = {}
    for _, path, title, caption in members:
        name = path.name.partition("_desc-")[0]
        series.setdefault(name, []).append(_figure_entry(output_dir, path, title, caption))
    return [
        {
            "name": f"{name}_asl",
            "figures": figures,
            "quality": read_quality(output_dir, subject, name),
        }
        for name, figures in series.items()
    ]


def find_figures(output_dir: Path, subject: str) -> list[dict]:
    """The figures in ``OUTPUT_DIR/sub-<label>/figures``, per ``FIGURE_GROUPS`` section:
    dicts with ``id``, ``heading``, ``figures`` (each with ``path`` relative to
    ``output_dir``, ``title``, ``caption`` and ``synthetic``: one of ``SYNTHETIC_FIGURES``)
    and ``series`` (the Perfusion section's figures and quality table per ASL series, else
    empty). Anatomical figures come in ``ANAT_FIGURES`` order, then suffix order; the other
    sections' figures series by series (``SERIES_ORDER``)."""
    output_dir = Path(output_dir)
    figures_dir = output_dir / f"sub-{subject}" / "figures"
    found = [
        (suffix, path, title, caption)
        for figures, suffixes in FIGURE_SETS
        for desc, title, caption in figures
        for suffix in suffixes
        for path in sorted(figures_dir.glob(f"sub-{subject}*_desc-{desc}_{suffix}.png"))
    ]
    groups = []
    for group_id, heading, suffixes in FIGURE_GROUPS:
        members = [item for item in found if item[0] in suffixes]
        orders = [SERIES_ORDER[suffix] for suffix in suffixes if suffix in SERIES_ORDER]
        if orders:
            members.sort(key=lambda item: _series_order(item[1], orders[0]))
        series = _perfusion_series(output_dir, subject, members) if "asl" in suffixes else []
        figures = [_figure_entry(output_dir, *item[1:]) for item in members]
        groups.append({"id": group_id, "heading": heading, "figures": figures, "series": series})
    return groups


def write_participant_report(
    output_dir: Path,
    subject: str,
    source: str,
    methods: list[str],
    references: list[str],
    stopped_by: str | None = None,
) -> Path:
    """Write ``OUTPUT_DIR/sub-<label>.html``; images are linked relative to it.

    ``stopped_by`` names the signal (``Ctrl-C``, ``SIGTERM``) that stopped the run before
    this subject's steps had all finished: the report then says so.
    """
    output_dir = Path(output_dir)
    groups = find_figures(output_dir, subject)
    figures = [figure for group in groups for figure in group["figures"]]
    measures_files = sorted((output_dir / f"sub-{subject}").glob("**/*_desc-anat_measures.tsv"))
    crashes = [
        {"path": path.relative_to(output_dir).as_posix(), "text": path.read_text(errors="replace")}
        for path in find_crash_files(output_dir, subject)
    ]
    html = (
        template_environment()
        .get_template("participant.html.j2")
        .render(
            subject=subject,
            version=__version__,
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            source=source,
            measures=read_measures(measures_files[0]) if measures_files else {},
            figures=figures,
            groups=groups,
            methods=methods,
            references=references,
            crashes=crashes,
            stopped_by=stopped_by,
            resources=latest_resources(output_dir, subject),
        )
    )
    return write_text_atomic(html, output_dir / f"sub-{subject}.html")
