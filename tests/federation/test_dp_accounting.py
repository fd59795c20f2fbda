"""DP-SGD accounting as a pure function of the (noise, sample rate, steps) history."""

from __future__ import annotations

import math

import pytest

from federation import dp_accounting


def test_empty_history_spends_nothing() -> None:
    assert dp_accounting.epsilon([], accountant="rdp") == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_more_steps_or_less_noise_spend_more(accountant: str) -> None:
    base = dp_accounting.epsilon([(1.0, 0.05, 100)], accountant=accountant)
    assert dp_accounting.epsilon([(1.0, 0.05, 200)], accountant=accountant) > base
    assert dp_accounting.epsilon([(0.8, 0.05, 100)], accountant=accountant) > base
    assert dp_accounting.epsilon([(1.0, 0.05, 100)], accountant=accountant, delta=1e-3) < base


def test_cumulative_epsilon_composes_history_not_a_sum_of_rounds() -> None:
    one = dp_accounting.epsilon([(1.0, 0.05, 100)], accountant="rdp")
    two = dp_accounting.epsilon([(1.0, 0.05, 100), (1.0, 0.05, 100)], accountant="rdp")
    assert one < two < 2 * one
    assert two == pytest.approx(dp_accounting.epsilon([(1.0, 0.05, 200)], accountant="rdp"), rel=1e-9)


def test_pinned_value_rdp() -> None:
    # Regression pin, measured with Opacus 1.6's RDP accountant: sigma=1.1, q=256/60000, 60 epochs
    # (the DP-SGD MNIST setting of Abadi et al. 2016). A change means the accountant changed: look before updating.
    eps = dp_accounting.epsilon([(1.1, 256 / 60000, int(60 * 60000 / 256))], delta=1e-5, accountant="rdp")
    assert eps == pytest.approx(2.5965558689607486, rel=1e-6)


@pytest.mark.parametrize("history, kw, msg", [
    ([(0.0, 0.1, 10)], {}, "invalid DP-SGD step"),
    ([(1.0, 1.5, 10)], {}, "invalid DP-SGD step"),
    ([(1.0, 0.1, 10)], {"delta": 0.0}, "delta"),
    ([(1.0, 0.1, 10)], {"accountant": "gdp"}, "accountant"),
])
def test_bad_inputs_raise(history: list, kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        dp_accounting.epsilon(history, **kw)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_merging_repeated_rounds_gives_opacus_unmerged_value(accountant: str) -> None:
    from opacus.accountants import create_accountant

    history = [(1.0, 0.06, 16), (1.2, 0.05, 20), (1.0, 0.06, 16), (1.0, 0.06, 16)]
    reference = create_accountant(mechanism=accountant)
    reference.history = list(history)  # Opacus composes every entry as given
    expected = reference.get_epsilon(delta=1e-5)
    assert dp_accounting.epsilon(history, accountant=accountant) == pytest.approx(expected, rel=1e-6)
    assert dp_accounting.epsilon(list(reversed(history)), accountant=accountant) == pytest.approx(expected, rel=1e-6)


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with mu = sensitivity / sigma (Balle and Wang 2018, Theorem 8):
    delta(eps) = Phi(-eps / mu + mu / 2) - e^eps Phi(-eps / mu - mu / 2), solved for eps."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    return brentq(lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 1e-6, 100)


def test_user_level_full_batch_matches_the_exact_gaussian_mechanism() -> None:
    """A node whose expected patients per step exceed its patients samples every patient (q = 1): T steps of
    noise sigma on a per-patient sensitivity C compose to one Gaussian mechanism with mu = sqrt(T) / sigma, whose
    epsilon per patient is known exactly (here 9.9973 at delta 1e-5). PRV must match it; RDP may only exceed it."""
    from gateway.trainer import DPConfig, plan_steps

    q, steps = plan_steps(40, cfg=DPConfig(expected_batch_size=64, unit="patient"), epochs=16)
    assert (q, steps) == (1.0, 16)
    exact = analytic_gaussian_epsilon(math.sqrt(steps) / 2.0, 1e-5)
    assert exact == pytest.approx(9.99726, abs=1e-4)
    assert dp_accounting.epsilon([(2.0, q, steps)], accountant="prv") == pytest.approx(exact, abs=0.02)
    assert exact < dp_accounting.epsilon([(2.0, q, steps)], accountant="rdp") < 1.1 * exact


@pytest.mark.parametrize("accountant, pinned", [("prv", 12.719904477986383), ("rdp", 13.826206011476339)])
def test_pinned_patient_level_plan(accountant: str, pinned: float) -> None:
    # Regression pin of a node of 3,000 patients, 256 expected per step, sigma 1.1, 5 rounds of 118 steps (Opacus 1.6)
    history = [(1.1, 256 / 3000, 118)] * 5
    assert dp_accounting.epsilon(history, accountant=accountant) == pytest.approx(pinned, rel=1e-6)


def test_threads_asking_the_same_history_at_once_share_one_computation() -> None:
    """A pool's nodes ask for the same history together; PRV (about 0.1 s a history) must run once, not per thread."""
    from concurrent.futures import ThreadPoolExecutor

    history = [(1.0, 0.0123457, 321)]  # a history no other test asks for: not in the cache yet
    before = dp_accounting._epsilon_computed.cache_info().misses
    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(lambda _: dp_accounting.epsilon(history, accountant="prv"), range(8)))
    assert len(set(values)) == 1 and values[0] > 0
    assert dp_accounting._epsilon_computed.cache_info().misses - before == 1
    assert dp_accounting._computing == {}  # nothing left behind
