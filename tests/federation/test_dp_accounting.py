"""DP-SGD accounting as a pure function of the (noise, sample rate, steps) history."""

from __future__ import annotations

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
