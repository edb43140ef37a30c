"""Threshold policy, in one place: how a job's cut is chosen, which cut a job uses, and how it is
shown.

* **When a job is created** (:func:`choose_method`): ``--threshold N`` is ``fixed``; no
  ``--threshold`` is the threshold ``miner calibrate`` stored for the model and margin
  (``calibrated``), else ``auto``; ``--threshold auto`` is auto even when a calibration exists. An
  auto job stores the model's fixed default to fall back to. The stored values live in
  :mod:`miner.runtime.defaults` (bundled thresholds, ``thresholds.json``).
* **When it finishes** (:func:`decide`): an auto job's cut is :func:`miner.core.autocut.decide` on its
  own scores and decoys (the fixed default when they allow no estimate, with one warning,
  :func:`fallback_warning`; a cut that rests on few translations is kept, with a warning too,
  :func:`uncertain_warning`); a fixed or calibrated job keeps its number. The finish step stores the
  result in ``jobs.threshold_info``.
* **Which cut a job uses** (:func:`effective_threshold`): the finish step's value, else the
  option's number; ``export --min-score`` wins over it at export time.
* **How it is shown** (:func:`threshold_status`, :func:`threshold_note`): ``status``, the report,
  the dashboard and the export's summary line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from miner.runtime import defaults
from miner.runtime.errors import MinerError
from miner.pipeline.spec import THRESHOLD_METHODS, job_spec  # noqa: F401 - THRESHOLD_METHODS: the methods a job stores

if TYPE_CHECKING:  # numpy loads where cuts are decided, SQLAlchemy where rows are: `miner status` needs neither
    import numpy as np

    from miner.runtime.db import Job


def choose_method(spec, margin: str, asked, home: Path | None = None) -> tuple[str, float | None, float | None]:
    """(method, threshold, fallback) of a new job from ``--threshold`` (a number, "auto" or None):
    a number is "fixed"; none given is the threshold `miner calibrate` stored for the model and
    margin ("calibrated"), else "auto"; "auto" is auto even when a calibration exists. An auto job
    gets the model's fixed default (calibrated, else bundled) to fall back to."""
    alias = spec.name if spec.kind == "alias" else ""
    if isinstance(asked, float):
        return "fixed", asked, None
    calibrated = defaults.calibrated_default(alias, margin, model_key=spec.key, home=home)
    if asked is None and calibrated is not None:
        return "calibrated", calibrated, None
    fixed = calibrated if calibrated is not None else defaults.bundled_threshold(alias, margin)
    return "auto", None, fixed


def threshold_method(options: dict) -> str | None:
    """The method of a job's options; jobs without one (mined before ``--threshold auto``, or created
    by library callers) are "fixed" when they have a number, None when they keep every candidate."""
    method = options.get("threshold_method")
    if method:
        return method
    return "fixed" if options.get("threshold") is not None else None


def effective_threshold(job: Job) -> float | None:
    """The cut a job uses: pairs with ``score >= value`` are its pairs (export default, report, eval,
    status). The value the finish step chose (``threshold_info["value"]``), else the option's number
    (None: an auto job not finished yet, or a job that keeps every candidate)."""
    info = job.threshold_info
    if isinstance(info, dict) and info.get("value") is not None:
        return float(info["value"])
    value = (job.options or {}).get("threshold")
    return None if value is None else float(value)


def threshold_status(job: Job) -> dict:
    """``{"value", "method", ...evidence}`` for ``status``: the finish step's record without the
    report's ``density`` grid; before finish ``{"value": None, "method": "auto"}`` for an auto job,
    the option's number and method otherwise ("none" for a job that keeps every candidate)."""
    info = job.threshold_info
    if isinstance(info, dict) and info.get("method"):
        out = {"value": info.get("value"), "method": info["method"]}
        out.update({k: v for k, v in info.items() if k not in ("value", "method", "density")})
        return out
    options = job.options or {}
    return {"value": options.get("threshold"), "method": threshold_method(options) or "none"}


def threshold_note(threshold: dict) -> str:
    """``auto: ~12% of candidates are translations, est. precision 95%``, ``fixed``, ``calibrated``,
    ``fallback: REASON``: the method and the evidence that is there (any of it may be missing)."""
    method = threshold.get("method") or "none"
    if method == "fallback":
        return f"fallback: {threshold.get('reason') or 'no reason recorded'}"
    if method != "auto":
        return method
    parts = []
    share, precision = threshold.get("share"), threshold.get("precision")
    if isinstance(share, (int, float)) and share == share:
        parts.append(f"~{100 * share:.0f}% of candidates are translations")
    if isinstance(precision, (int, float)) and precision == precision:
        parts.append(f"est. precision {100 * precision:.0f}%")
    return "auto" + (": " + ", ".join(parts) if parts else "")


def fallback_warning(job_id: int, info: dict | None) -> str | None:
    """The one warning line of an auto job that fell back to the fixed default, else None."""
    if not isinstance(info, dict) or info.get("method") != "fallback":
        return None
    value = info.get("value")
    shown = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return (f"job {job_id}: automatic threshold fell back to the fixed default {shown}: "
            f"{info.get('reason') or 'no reason recorded'}")


def uncertain_warning(job_id: int, info: dict | None) -> str | None:
    """The warning line of an auto job whose cut is marked uncertain (few estimated translations, or
    a low expected F1: :data:`miner.core.autocut.FEW_TRANSLATIONS`, ``LOW_EXPECTED_F1``), else None."""
    if not isinstance(info, dict) or info.get("method") != "auto" or not info.get("uncertain"):
        return None
    count, f1 = info.get("translations"), info.get("f1")
    parts = [f"about {count:.0f} estimated translations" if isinstance(count, (int, float)) else None,
             f"expected F1 {100 * f1:.0f}%" if isinstance(f1, (int, float)) else None]
    evidence = ", ".join(p for p in parts if p)
    return (f"job {job_id}: the automatic threshold is uncertain here" + (f" ({evidence})" if evidence else "")
            + ": with this few translations, or this much overlap with the rest, it can miss the best cut by "
              f"4-10 F1; for a better one, judge a sample of the pairs and run `miner calibrate {job_id} --gold "
              "SAMPLE --sample`, or pass --threshold")


def threshold_warning(job_id: int, info: dict | None) -> str | None:
    """The one warning line about a job's cut (:func:`fallback_warning`, :func:`uncertain_warning`), else None."""
    return fallback_warning(job_id, info) or uncertain_warning(job_id, info)


def json_ready(value):
    """``value`` with numpy scalars and arrays as Python numbers and lists, and nan/inf as None
    (PostgreSQL's JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # a numpy array or scalar
        value = value.tolist()
        if isinstance(value, list):
            return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def decide(job: Job, inputs) -> tuple[float | None, dict | None, np.ndarray | None]:
    """The cut of a finished job: (value, threshold_info, probability per candidate).

    ``auto``: :func:`miner.core.autocut.decide` on the job's own scores, falling back to the fixed default
    resolved when the job was created (``fallback_threshold``; for jobs without one, the model's
    default as ``miner.runtime.defaults`` resolves it now). ``fixed`` / ``calibrated``: the job's number.
    No method and no number (library callers): every candidate counts, nothing is recorded."""
    import numpy as np

    from miner.core import autocut

    options = job_spec(job)
    method = threshold_method(job.options or {})
    if method in ("fixed", "calibrated"):
        value = float(options.threshold)
        return value, {"value": value, "method": method}, None
    if method != "auto":
        return None, None, None
    fixed = options.fallback_threshold
    if fixed is None:
        from miner.embedding.encoders import ALIASES

        alias = job.model if job.model in ALIASES else ""
        fixed = defaults.default_threshold(alias, options.margin, model_key=options.model_key)
    decision = autocut.decide(inputs, options.margin, float(fixed))
    info = json_ready(decision.to_json())
    probability = None
    if decision.probability is not None:
        probability = np.asarray(decision.probability, dtype=np.float64)
        if probability.shape != np.shape(inputs.scores):
            raise MinerError(f"job {job.id}: the automatic threshold gave {probability.shape[0]} probabilities for "
                             f"{len(inputs.scores)} candidates")
    return float(decision.value), info, probability
