"""The promotion decision: does a candidate model replace the champion serving an environment?

A `PromotionPolicy` names the held-out metric compared, whether a tie is enough and a minimum gain.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from event_sourcing.errors import ConfigurationError

__all__ = ["Decision", "PromotionPolicy"]


@dataclass(frozen=True)
class Decision:
    """A verdict and why, in words the log and the UI show."""

    promote: bool
    reason: str

    def __iter__(self) -> Iterator[Any]:
        """`promote, reason = policy.decide(...)`."""
        return iter((self.promote, self.reason))


@dataclass(frozen=True)
class PromotionPolicy:
    """Promote a candidate when its held-out `metric` beats the champion's.

    `strictly_better` (the default): a tie keeps the champion, so retraining on data that
    changes nothing does not redeploy on every batch. `min_gain`: the candidate must beat the
    champion by at least this much (0.01 = one point of accuracy). `higher_is_better=False`
    for losses.
    """

    metric: str = "accuracy"
    strictly_better: bool = True
    min_gain: float = 0.0
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not self.metric:
            raise ConfigurationError("a promotion policy needs a metric name")
        if self.min_gain < 0:
            raise ConfigurationError(f"min_gain must be >= 0, got {self.min_gain}")

    def decide(
        self, candidate: Mapping[str, Any], champion: Mapping[str, Any] | None
    ) -> Decision:
        """The verdict on `candidate` against `champion` (None: nothing serves yet).

        Both are mappings with `model_id`, `metrics` and, optionally, `fingerprint`.
        """
        if champion is None:
            return Decision(True, "no model is deployed yet")
        if candidate["model_id"] == champion["model_id"]:
            return Decision(False, "the candidate is already the deployed model")
        if candidate.get("fingerprint") and candidate["fingerprint"] == champion.get(
            "fingerprint"
        ):
            return Decision(False, "the candidate is identical to the champion (same fingerprint)")
        name = self.metric
        for role, model in (("candidate", candidate), ("champion", champion)):
            if name not in model["metrics"]:
                raise ConfigurationError(
                    f"the {role} has no {name!r} metric (it has {sorted(model['metrics'])}); "
                    "name one of those in the promotion policy"
                )
        new, old = float(candidate["metrics"][name]), float(champion["metrics"][name])
        gain = new - old if self.higher_is_better else old - new
        if self.min_gain > 0:
            if gain >= self.min_gain:
                return Decision(
                    True, f"held-out {name} {new:.4f} vs champion's {old:.4f}: gain {gain:.4f} "
                    f">= {self.min_gain:g}"
                )
            return Decision(
                False, f"held-out {name} {new:.4f} vs champion's {old:.4f}: gain {gain:.4f} "
                f"< the minimum {self.min_gain:g}"
            )
        if gain > 0 or (gain == 0 and not self.strictly_better):
            sign = ">" if gain > 0 else ">="
            return Decision(True, f"held-out {name} {new:.4f} {sign} champion's {old:.4f}")
        if gain == 0:
            return Decision(
                False, f"held-out {name} {new:.4f} ties the champion's {old:.4f} (promotion "
                "needs a strictly better model)"
            )
        sign = "<" if self.higher_is_better else ">"
        return Decision(False, f"held-out {name} {new:.4f} {sign} champion's {old:.4f}")
