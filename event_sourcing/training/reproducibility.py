"""What makes a training run re-runnable: environment, code version and model fingerprints.

Also the registry of training functions, so a recorded run can find the code to re-run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from typing import Any, overload

import numpy as np

from event_sourcing.catalog import CodeVersion, Environment
from event_sourcing.training.errors import TrainingError, TrainingFunctionNotFoundError

__all__ = [
    "DEFAULT_DIGITS",
    "TRACKED_PACKAGES",
    "TrainFn",
    "TrainingFunctionRegistry",
    "canonical_json",
    "capture_environment",
    "code_version",
    "default_training_functions",
    "fingerprint_components",
    "fingerprint_of",
    "model_fingerprint",
    "package_version",
    "source_sha256",
    "training_function",
]

TrainFn = Callable[[Any, dict[str, Any], int | None], Any]
"""A training function: ``fn(dataset, hyperparameters, seed) -> fitted model``.

`dataset` is the table recorded by the run (as `ArtifactStore.get_table` returns it). The
function must get all its randomness from `seed` for the run to be reproducible.
"""

TRACKED_PACKAGES: tuple[str, ...] = (
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "pydantic",
    "mlevents",
)
"""Distributions whose versions a run records (they change numeric results or encodings)."""

DEFAULT_DIGITS = 10
"""Floats keep this many significant decimal digits when fingerprinted (see model_fingerprint)."""

_GIT_TIMEOUT_SECONDS = 2.0
# Learned attributes (scikit-learn naming) that define a fitted model's behaviour. A fixed,
# ordered list keeps fingerprints stable when estimators grow new diagnostic attributes.
_LEARNED_ATTRIBUTES = (
    "classes_",
    "coef_",
    "intercept_",
    "feature_importances_",
    "cluster_centers_",
    "components_",
    "dual_coef_",
    "support_vectors_",
    "mean_",
    "var_",
    "scale_",
    "theta_",
    "class_prior_",
    "feature_log_prob_",
    "n_features_in_",
)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# -- environment and code -------------------------------------------------------------------------


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None if it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def capture_environment(extra_packages: Iterable[str] = ()) -> Environment:
    """The Python version, platform and versions of the libraries that shape the result."""
    packages: dict[str, str] = {}
    for name in (*TRACKED_PACKAGES, *extra_packages):
        version = package_version(name)
        if version is not None:
            packages[name] = version
    return Environment(
        python=platform.python_version(), platform=platform.platform(), packages=packages
    )


def source_sha256(fn: Callable[..., Any]) -> str | None:
    """sha256 of a function's source text, or None when the source is unavailable.

    Only the function's own text is hashed, not the helpers it calls: put everything that
    shapes the model inside the training function (or pin helpers by package version).
    """
    target = inspect.unwrap(fn)
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _git_commit(directory: str | None) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory or None,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, a timeout, or an unreadable folder: the commit is just unknown
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def code_version(fn: Callable[..., Any] | None = None) -> CodeVersion:
    """Package version of mlevents, the git commit of `fn`'s folder, and `fn`'s source hash.

    The commit comes from ``git rev-parse HEAD`` run where `fn`'s source file lives (the
    current directory if there is no `fn`); it is None outside a repository or without git.
    """
    directory: str | None = None
    if fn is not None:
        try:
            source_file = inspect.getsourcefile(inspect.unwrap(fn))
        except TypeError:
            source_file = None
        if source_file:
            directory = os.path.dirname(os.path.abspath(source_file))
    return CodeVersion(
        package_version=package_version("mlevents") or "0+unknown",
        git_commit=_git_commit(directory),
        source_sha256=source_sha256(fn) if fn is not None else None,
    )


# -- fingerprints ---------------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON of `value`; non-JSON values become stable text."""
    return json.dumps(
        _plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
    )


def _plain(value: Any) -> Any:
    """A JSON-ready, deterministic stand-in for a parameter value."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, np.ndarray):
        return {
            "ndarray": value.dtype.str,
            "shape": list(value.shape),
            "values": _plain(value.tolist()),
        }
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_plain(item) for item in value), key=repr)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if hasattr(value, "get_params"):
        # A nested estimator: get_params(deep=True) already lists its parameters separately.
        cls = type(value)
        return f"{cls.__module__}.{cls.__qualname__}"
    if callable(value):
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"{getattr(value, '__module__', '')}.{name}"
    # repr of arbitrary objects may embed memory addresses; drop them to stay deterministic.
    return _ADDRESS.sub("", repr(value))


def _round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Round to about `digits` significant decimal digits (relative, not absolute, rounding).

    Rounding the binary mantissa keeps it exact and overflow-free for any magnitude, and
    relative rounding treats a coefficient of 1e3 and a probability of 1e-3 alike: the same
    model trained on the same data in a different memory layout differs in the last bits.
    """
    bits = math.ceil(digits * math.log2(10))
    mantissa, exponent = np.frexp(values)
    rounded = np.ldexp(np.round(mantissa * 2.0**bits) / 2.0**bits, exponent)
    # + 0.0 turns -0.0 into 0.0; NaNs are made one canonical NaN (payload and sign vary).
    return np.where(np.isnan(values), np.nan, rounded + 0.0)


def _array_digest(hasher: Any, label: str, values: Any, digits: int) -> None:
    array = np.asarray(values)
    hasher.update(f"{label}|{array.shape}|".encode())
    if array.dtype.kind == "c":
        array = np.stack([array.real, array.imag], axis=-1)
    if array.dtype.kind == "f":
        rounded = _round_significant(array.astype(np.float64), digits)
        hasher.update(b"f" + np.ascontiguousarray(rounded, dtype="<f8").tobytes())
    elif array.dtype.kind in "iub":
        hasher.update(b"i" + np.ascontiguousarray(array, dtype="<i8").tobytes())
    else:
        hasher.update(b"j" + canonical_json(array.tolist()).encode())


def _learned_state(model: Any, prefix: str = "") -> dict[str, Any]:
    state: dict[str, Any] = {}
    steps = getattr(model, "steps", None)
    if isinstance(steps, list) and all(isinstance(s, tuple) and len(s) >= 2 for s in steps):
        for name, step, *_ in steps:  # Pipeline: the learned state of every step
            if step is not None and step != "passthrough":
                state.update(_learned_state(step, f"{prefix}{name}."))
        return state
    for attr in _LEARNED_ATTRIBUTES:
        try:
            value = getattr(model, attr)
        except Exception:  # unfitted or not applicable: sklearn raises various errors
            continue
        state[prefix + attr] = value
    tree = getattr(model, "tree_", None)
    if tree is not None:
        tree_state = tree.__getstate__()
        for key in ("nodes", "values"):
            if key in tree_state:
                nodes = np.asarray(tree_state[key])
                if nodes.dtype.names:  # structured: hash field by field, in name order
                    for field in nodes.dtype.names:
                        state[f"{prefix}tree_.{key}.{field}"] = nodes[field]
                else:
                    state[f"{prefix}tree_.{key}"] = nodes
    return state


def fingerprint_components(
    model: Any, X_eval: Any = None, *, digits: int = DEFAULT_DIGITS
) -> dict[str, str]:
    """sha256 digests of a model's parts: estimator params, learned state, and behaviour.

    Keys: ``params`` (``get_params()`` as canonical JSON), ``learned`` (coef_, intercept_,
    feature_importances_, tree nodes... where present), and, when `X_eval` is given,
    ``predictions`` and ``probabilities`` (``predict_proba``, if the estimator has it).
    Floats keep `digits` significant digits so harmless last-bit noise does not count.
    """
    components: dict[str, str] = {}
    get_params = getattr(model, "get_params", None)
    if callable(get_params):
        params = get_params(deep=True)
        components["params"] = hashlib.sha256(canonical_json(params).encode()).hexdigest()
    learned = _learned_state(model)
    if learned:
        hasher = hashlib.sha256()
        for name in sorted(learned):
            _array_digest(hasher, name, learned[name], digits)
        components["learned"] = hasher.hexdigest()
    if X_eval is not None:
        predict = getattr(model, "predict", None)
        if not callable(predict):
            raise TrainingError(
                f"{type(model).__name__} has no predict(); fingerprint it without X_eval or "
                "wrap it in an object with a predict method"
            )
        hasher = hashlib.sha256()
        _array_digest(hasher, "predict", predict(X_eval), digits)
        components["predictions"] = hasher.hexdigest()
        if hasattr(model, "predict_proba"):  # sklearn hides it when unavailable (available_if)
            hasher = hashlib.sha256()
            _array_digest(hasher, "predict_proba", model.predict_proba(X_eval), digits)
            components["probabilities"] = hasher.hexdigest()
    if not components:
        raise TrainingError(
            f"cannot fingerprint {type(model).__name__}: it has no get_params, no known learned "
            "attributes and no X_eval was given; pass an evaluation set"
        )
    return components


def fingerprint_of(components: Mapping[str, str]) -> str:
    """The single fingerprint (sha256 hex) of a set of components."""
    return hashlib.sha256(canonical_json(dict(components)).encode()).hexdigest()


def model_fingerprint(model: Any, X_eval: Any = None, *, digits: int = DEFAULT_DIGITS) -> str:
    """sha256 over a model's params, learned state and predictions on `X_eval`.

    Two models with equal fingerprints behave the same on the evaluation set and have the
    same parameters (to `digits` significant digits). Pickle bytes are not used: they vary with
    library versions even when the model does not.
    """
    return fingerprint_of(fingerprint_components(model, X_eval, digits=digits))


# -- training function registry -------------------------------------------------------------------


class TrainingFunctionRegistry:
    """Training functions by name, so a recorded run can find the code that re-runs it.

    A name defaults to ``module:qualname``; a name not registered in this process is
    imported from that form when possible, so verification works in a fresh process.
    """

    def __init__(self) -> None:
        self._functions: dict[str, TrainFn] = {}

    @staticmethod
    def default_name(fn: Callable[..., Any]) -> str:
        return f"{fn.__module__}:{fn.__qualname__}"

    @overload
    def register(self, fn: TrainFn, *, name: str | None = None) -> TrainFn: ...

    @overload
    def register(
        self, fn: None = None, *, name: str | None = None
    ) -> Callable[[TrainFn], TrainFn]: ...

    def register(
        self, fn: TrainFn | None = None, *, name: str | None = None
    ) -> TrainFn | Callable[[TrainFn], TrainFn]:
        """Register `fn` (directly or as a decorator, with or without a name)."""

        def decorate(function: TrainFn) -> TrainFn:
            if not callable(function):
                raise TrainingError(f"{function!r} is not callable; register a function")
            self._functions[name or self.default_name(function)] = function
            return function

        return decorate if fn is None else decorate(fn)

    def name_of(self, fn: Callable[..., Any]) -> str:
        """The name `fn` is registered under (registering it under its default if needed)."""
        for key, value in self._functions.items():
            if value is fn:
                return key
        key = self.default_name(fn)
        self._functions[key] = fn
        return key

    def get(self, name: str) -> TrainFn:
        """The function registered as `name`, importing ``module:qualname`` if needed."""
        found = self._functions.get(name)
        if found is not None:
            return found
        module_name, sep, qualname = name.partition(":")
        if sep and "<locals>" not in qualname:
            try:
                target: Any = importlib.import_module(module_name)
                for part in qualname.split("."):
                    target = getattr(target, part)
            except (ImportError, AttributeError):
                pass
            else:
                if callable(target):
                    self._functions[name] = target
                    return target
        raise TrainingFunctionNotFoundError(
            f"training function {name!r} is not registered in this process and cannot be "
            "imported; import the module that defines it (decorate it with "
            "@training_function) or pass train_fn= explicitly"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def names(self) -> list[str]:
        return sorted(self._functions)


default_training_functions = TrainingFunctionRegistry()
"""The process-wide registry used when a TrainingService is not given its own."""


@overload
def training_function(fn: TrainFn, *, name: str | None = None) -> TrainFn: ...


@overload
def training_function(
    fn: None = None, *, name: str | None = None
) -> Callable[[TrainFn], TrainFn]: ...


def training_function(
    fn: TrainFn | None = None, *, name: str | None = None
) -> TrainFn | Callable[[TrainFn], TrainFn]:
    """Decorator: register a training function in `default_training_functions`."""
    if fn is None:
        return default_training_functions.register(name=name)
    return default_training_functions.register(fn, name=name)
