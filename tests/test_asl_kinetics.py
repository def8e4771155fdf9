"""CBF quantification against hand computations from the consensus paper's formulas
(Alsop et al., MRM 2015) and Buxton's kinetic model."""

import math

import numpy as np
import pytest

from bids_dl.models.asl_kinetics import (
    LabelingScheme,
    blood_t1,
    cbf_from_difference,
    difference_signal,
    fit_cbf_att,
    labeling_efficiency,
)

PCASL = LabelingScheme("PCASL", bolus_duration=1.8, efficiency=0.85, t1_blood=1.65)
PASL = LabelingScheme("PASL", bolus_duration=0.8, efficiency=0.98, t1_blood=1.65)


def test_pcasl_cbf_matches_the_white_paper_formula():
    # dM/M0 = 1 %, PLD 1.8 s, tau 1.8 s, T1b 1.65 s, alpha 0.85, lambda 0.9
    expected = (6000 * 0.9 * 0.01 * math.exp(1.8 / 1.65)) / (
        2 * 0.85 * 1.65 * (1 - math.exp(-1.8 / 1.65))
    )
    assert expected == pytest.approx(86.30, abs=0.01)
    cbf = cbf_from_difference(np.array([5.0]), np.array([500.0]), 1.8, PCASL)
    assert cbf[0] == pytest.approx(expected, rel=1e-9)


def test_pasl_cbf_matches_the_quipss_ii_formula():
    # dM/M0 = 0.8 %, TI 1.8 s, TI1 0.8 s, alpha 0.98
    expected = 6000 * 0.9 * 0.008 * math.exp(1.8 / 1.65) / (2 * 0.98 * 0.8 * 1.0)
    assert cbf_from_difference(0.008, 1.0, 1.8, PASL) == pytest.approx(expected, rel=1e-9)


def test_slice_timing_raises_the_delay_and_the_cbf():
    delays = 1.8 + np.array([0.0, 0.5])
    cbf = cbf_from_difference(np.full(2, 0.01), 1.0, delays, PCASL)
    assert cbf[1] / cbf[0] == pytest.approx(math.exp(0.5 / 1.65))


def test_zero_m0_gives_zero_not_infinity():
    assert cbf_from_difference(np.array([1.0, 1.0]), np.array([0.0, 100.0]), 1.8, PCASL)[0] == 0


@pytest.mark.parametrize("scheme", [PCASL, PASL])
def test_forward_then_inverse_recovers_the_cbf_when_the_bolus_has_arrived(scheme):
    signal = difference_signal(60.0, 0.5, 1.8, scheme, m0=1000.0)
    assert cbf_from_difference(signal, 1000.0, 1.8, scheme) == pytest.approx(60.0)


def test_buxton_model_by_hand_before_the_bolus_has_arrived():
    # PCASL, ATT 2.0 s > PLD 1.5 s: only 1.3 s of the 1.8 s bolus has arrived
    f = 50 / 6000 / 0.9
    expected = (
        2 * 0.85 * f * 1.65 * math.exp(-2.0 / 1.65) * (1 - math.exp(-(1.8 + 1.5 - 2.0) / 1.65))
    )
    assert difference_signal(50.0, 2.0, 1.5, PCASL) == pytest.approx(expected, rel=1e-9)
    assert difference_signal(50.0, 3.5, 1.5, PCASL) == 0  # nothing has arrived
    # PASL, TI 1.0 s, ATT 0.6 s: 0.4 s of the 0.8 s bolus
    expected = 2 * 0.98 * 50 / 6000 / 0.9 * 0.4 * math.exp(-1.0 / 1.65)
    assert difference_signal(50.0, 0.6, 1.0, PASL) == pytest.approx(expected, rel=1e-9)


def test_multi_delay_fit_recovers_cbf_and_transit_time():
    delays = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    cbf_true = np.array([30.0, 60.0, 80.0])
    att_true = np.array([0.8, 1.3, 1.9])
    m0 = np.array([900.0, 1000.0, 1100.0])
    signal = difference_signal(cbf_true[:, None], att_true[:, None], delays, PCASL, m0[:, None])
    cbf, att = fit_cbf_att(signal, m0, delays, PCASL)
    np.testing.assert_allclose(cbf, cbf_true, rtol=1e-6)
    np.testing.assert_allclose(att, att_true, atol=1e-6)


def test_multi_delay_fit_with_noise_stays_close():
    rng = np.random.default_rng(0)
    delays = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    signal = difference_signal(60.0, 1.2, delays, PCASL, 1000.0)
    noisy = signal + rng.normal(0, 0.02 * signal.max(), (500, delays.size))
    cbf, att = fit_cbf_att(noisy, np.full(500, 1000.0), delays, PCASL)
    assert np.median(cbf) == pytest.approx(60.0, rel=0.05)
    assert np.median(att) == pytest.approx(1.2, abs=0.05)


def test_efficiency_and_blood_t1_constants():
    assert labeling_efficiency("PCASL") == 0.85
    assert labeling_efficiency("PASL") == 0.98
    assert labeling_efficiency("PCASL", background_pulses=2) == pytest.approx(0.85 * 0.95**2)
    assert labeling_efficiency("PCASL", given=0.7, background_pulses=1) == pytest.approx(0.665)
    assert blood_t1(3.0) == 1.65
    assert blood_t1(1.5) == 1.35
