"""The promotion policy, without Dagster: strictly better by default, a configurable minimum
gain, ties keep the champion (they used to redeploy on every batch)."""

import pytest

import event_sourcing as es
from event_sourcing.ml import PromotionPolicy

CHAMPION = {"model_id": "a", "fingerprint": "f1", "metrics": {"accuracy": 0.9710}}


def candidate(accuracy: float, fingerprint: str = "f2") -> dict:
    return {"model_id": "b", "fingerprint": fingerprint, "metrics": {"accuracy": accuracy}}


def test_a_tie_keeps_the_champion_by_default() -> None:
    promote, reason = PromotionPolicy().decide(candidate(0.9710), CHAMPION)
    assert not promote
    assert reason == (
        "held-out accuracy 0.9710 ties the champion's 0.9710 (promotion needs a strictly "
        "better model)"
    )


def test_a_tie_promotes_when_the_policy_allows_it() -> None:
    decision = PromotionPolicy(strictly_better=False).decide(candidate(0.9710), CHAMPION)
    assert decision.promote and ">=" in decision.reason


def test_better_promotes_worse_does_not() -> None:
    policy = PromotionPolicy()
    assert policy.decide(candidate(0.9711), CHAMPION).promote
    assert not policy.decide(candidate(0.97), CHAMPION).promote


def test_a_minimum_gain() -> None:
    policy = PromotionPolicy(min_gain=0.01)
    assert not policy.decide(candidate(0.9800), CHAMPION).promote
    decision = policy.decide(candidate(0.9811), CHAMPION)
    assert decision.promote and "gain 0.0101 >= 0.01" in decision.reason


def test_a_loss_metric_promotes_the_lower() -> None:
    policy = PromotionPolicy(metric="log_loss", higher_is_better=False)
    champion = {"model_id": "a", "metrics": {"log_loss": 0.3}}
    assert policy.decide({"model_id": "b", "metrics": {"log_loss": 0.2}}, champion).promote
    assert not policy.decide({"model_id": "b", "metrics": {"log_loss": 0.4}}, champion).promote


def test_identity_and_no_champion() -> None:
    policy = PromotionPolicy()
    assert tuple(policy.decide(candidate(0.1), None)) == (True, "no model is deployed yet")
    assert not policy.decide(candidate(0.99, fingerprint="f1"), CHAMPION).promote
    same = {**CHAMPION}
    assert policy.decide(same, CHAMPION).reason == "the candidate is already the deployed model"


def test_a_policy_naming_a_missing_metric_says_which_exist() -> None:
    with pytest.raises(es.ConfigurationError, match=r"no 'f1' metric \(it has \['accuracy'\]\)"):
        PromotionPolicy(metric="f1").decide(candidate(0.9), CHAMPION)
    with pytest.raises(es.ConfigurationError, match="min_gain"):
        PromotionPolicy(min_gain=-1)
