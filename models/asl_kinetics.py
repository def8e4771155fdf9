"""ASL kinetics: the label-control difference a perfusion gives, and perfusion from it.

The forward model is Buxton's general kinetic model (Buxton et al., MRM 1998) with the tissue
T1 taken equal to the blood's and no outflow, the simplification the consensus paper makes
(Alsop et al., MRM 2015). Its inverse at one delay is the consensus formula: for (P)CASL

    CBF = 6000 * lambda * dM * exp(PLD / T1b) / (2 * alpha * T1b * M0 * (1 - exp(-tau / T1b)))

and for PASL with QUIPSS II (bolus width TI1, inversion time TI)

    CBF = 6000 * lambda * dM * exp(TI / T1b) / (2 * alpha * TI1 * M0)

in mL/100 g/min. With several delays, CBF and the arterial transit time (ATT) are fitted by
least squares. Times are in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: mL/g/s -> mL/100 g/min
CBF_UNITS = 6000.0
#: blood T1 (s) by field strength (T): 1.5 and 3 T from the consensus paper, 7 T Zhang et al. 2013
BLOOD_T1 = {1.5: 1.35, 3.0: 1.65, 7.0: 2.087}
#: labelling efficiency without background suppression (Alsop et al. 2015)
DEFAULT_EFFICIENCY = {"PCASL": 0.85, "CASL": 0.68, "PASL": 0.98}
#: the labelling efficiency kept by each background-suppression pulse (as ASLPrep)
BACKGROUND_PULSE_EFFICIENCY = 0.95
#: brain-blood partition coefficient (mL/g)
PARTITION_COEFFICIENT = 0.9
#: arterial transit times (s) searched by the multi-delay fit
ATT_GRID = np.round(np.arange(0.1, 3.0001, 0.01), 4)


def label_control_pairs(context: list[str]) -> list[tuple[int, int]]:
    """(label, control) volume indices of each pair of an ASL series, in acquisition order:
    the i-th label with the i-th control (the input checks make them adjacent rows); a
    ``deltam`` volume, a pair the scanner already subtracted, is (i, i). Other volumes
    (``m0scan``, ``cbf``) are skipped."""
    names = [name.strip().lower() for name in context]
    labels = [i for i, name in enumerate(names) if name == "label"]
    controls = [i for i, name in enumerate(names) if name == "control"]
    pairs = list(zip(labels, controls, strict=False))
    pairs += [(i, i) for i, name in enumerate(names) if name == "deltam"]
    return sorted(pairs, key=max)


@dataclass(frozen=True)
class LabelingScheme:
    """What a labelling does to the blood: type, bolus, efficiency and blood T1."""

    labeling_type: str
    #: labelling duration (PCASL/CASL) or TI1, the bolus cut-off delay (PASL, QUIPSS II), s
    bolus_duration: float
    #: alpha, the background-suppression loss included
    efficiency: float
    t1_blood: float = BLOOD_T1[3.0]
    partition_coefficient: float = PARTITION_COEFFICIENT

    @property
    def pulsed(self) -> bool:
        return self.labeling_type == "PASL"


def blood_t1(field_strength: float) -> float:
    """Blood T1 (s) at a field strength (T), interpolated between the tabled fields."""
    fields = sorted(BLOOD_T1)
    return float(np.interp(field_strength, fields, [BLOOD_T1[f] for f in fields]))


def labeling_efficiency(
    labeling_type: str, given: float | None = None, background_pulses: int = 0
) -> float:
    """alpha: the efficiency the sidecar gives, else the consensus value for the labelling
    type, times 0.95 per background-suppression pulse."""
    alpha = DEFAULT_EFFICIENCY[labeling_type] if given is None else given
    return float(alpha * BACKGROUND_PULSE_EFFICIENCY**background_pulses)


def difference_signal(
    cbf: np.ndarray | float,
    att: np.ndarray | float,
    delay: np.ndarray | float,
    scheme: LabelingScheme,
    m0: np.ndarray | float = 1.0,
) -> np.ndarray:
    """The control-minus-label signal of a perfusion ``cbf`` (mL/100 g/min) arriving after
    ``att`` (s), read ``delay`` s after the end of labelling (PCASL/CASL: the post-labelling
    delay) or after the inversion (PASL: TI). Arrays broadcast."""
    cbf, att, delay = np.asarray(cbf, float), np.asarray(att, float), np.asarray(delay, float)
    t1b, tau = scheme.t1_blood, scheme.bolus_duration
    flow = cbf / CBF_UNITS / scheme.partition_coefficient  # 1/s
    scale = 2 * scheme.efficiency * np.asarray(m0, float) * flow
    if scheme.pulsed:
        filled = np.clip(delay - att, 0.0, tau)  # the part of the bolus that has arrived
        return scale * filled * np.exp(-delay / t1b)
    since_arrival = np.clip(delay + tau - att, 0.0, tau)  # labelled blood delivered so far
    decay = np.exp(-np.maximum(att, delay) / t1b)
    # once the whole bolus has arrived (att <= delay) this is the consensus model
    return scale * t1b * decay * (1 - np.exp(-since_arrival / t1b))


def cbf_from_difference(
    delta_m: np.ndarray,
    m0: np.ndarray | float,
    delay: np.ndarray | float,
    scheme: LabelingScheme,
) -> np.ndarray:
    """CBF (mL/100 g/min) from a mean control-minus-label difference at one delay (the
    consensus model: the whole bolus has arrived); zero where M0 is not positive."""
    unit = difference_signal(1.0, 0.0, delay, scheme)  # the signal of 1 mL/100 g/min, M0 = 1
    m0 = np.asarray(m0, float)
    safe = np.where(m0 > 0, m0, 1.0)
    return np.where(m0 > 0, np.asarray(delta_m, float) / (safe * unit), 0.0)


def fit_cbf_att(
    delta_m: np.ndarray,
    m0: np.ndarray | float,
    delays: np.ndarray,
    scheme: LabelingScheme,
    att_grid: np.ndarray = ATT_GRID,
) -> tuple[np.ndarray, np.ndarray]:
    """CBF and ATT from differences at several delays (last axis of ``delta_m``; ``delays``
    broadcasts to it, e.g. per slice). For each ATT of the grid the model is linear in CBF,
    so CBF has a closed form; the ATT with the smallest squared residual wins."""
    delta_m = np.asarray(delta_m, float)
    m0 = np.asarray(m0, float)[..., None]
    delays = np.broadcast_to(np.asarray(delays, float), delta_m.shape)
    best_cbf = np.zeros(delta_m.shape[:-1])
    best_att = np.full(delta_m.shape[:-1], np.nan)
    best_residual = np.full(delta_m.shape[:-1], np.inf)
    for att in att_grid:
        unit = difference_signal(1.0, att, delays, scheme, m0)
        energy = (unit**2).sum(-1)
        projection = (delta_m * unit).sum(-1)
        cbf = np.divide(projection, energy, out=np.zeros_like(projection), where=energy > 0)
        residual = (delta_m**2).sum(-1) - cbf * projection
        better = (residual < best_residual) & (energy > 0)
        best_cbf = np.where(better, cbf, best_cbf)
        best_att = np.where(better, att, best_att)
        best_residual = np.where(better, residual, best_residual)
    return best_cbf, best_att
