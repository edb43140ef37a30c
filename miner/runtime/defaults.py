"""Default option values, and the calibrated thresholds that override the bundled ones.

Bundled thresholds were tuned on the shared Tatoeba data only (see docs/quality.md). ``miner
calibrate`` stores a recommended threshold per model and margin in ``$MINER_HOME/thresholds.json``;
new jobs created with that MINER_HOME then use it when ``--threshold`` is not given (instead of
``--threshold auto``). The value -- and for auto jobs the fixed default they fall back to -- is
resolved once, when a job is created, and stored in the job's options, so workers never read it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

K = 4
SHARD_SIZE = 10_000
MAX_LINE_LENGTH = 2_000  # characters, after whitespace normalisation
MARGIN = "ratio"
RETRIEVAL = "max"
MODEL = "muse"

# Default --threshold per model and margin. `muse` values: best mean F1 on the Tatoeba de/fr/es-en
# cases with 5,000 English distractors (bench/tune_threshold.py, and `miner calibrate` on the same
# jobs recommends the same values). Other models get LASER's usual values.
THRESHOLDS = {
    "muse": {"ratio": 1.05, "distance": 0.034, "absolute": 0.47},
}
GENERIC_THRESHOLDS = {"ratio": 1.05, "distance": 0.03, "absolute": 0.70}

#: Decimals of a calibrated threshold per margin (ratio ~1.0-1.3, distance ~0-0.1, absolute ~0.3-1).
DECIMALS = {"ratio": 2, "distance": 3, "absolute": 2}

CALIBRATION_FILE = "thresholds.json"


def calibration_path(home: Path | None = None) -> Path:
    """``$MINER_HOME/thresholds.json`` (MINER_HOME as the configuration resolves it)."""
    if home is None:
        from miner.runtime.config import Config

        home = Config.from_env().home
    return Path(home) / CALIBRATION_FILE


def load_calibrations(home: Path | None = None) -> dict:
    """``{model: {margin: {"threshold": ..., ...}}}`` from the calibration file ({} when none).

    A file that cannot be read or parsed gives a warning on stderr and counts as empty, so a broken
    file never stops mining (the bundled defaults apply)."""
    path = calibration_path(home)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        print(f"warning: ignoring {path}: {exc}; the bundled default thresholds apply", file=sys.stderr)
        return {}
    models = data.get("models") if isinstance(data, dict) else None
    return models if isinstance(models, dict) else {}


def store_calibration(model: str, margin: str, entry: dict, home: Path | None = None) -> Path:
    """Store ``entry`` (with ``threshold``) as the default of ``model``/``margin``; atomic write."""
    path = calibration_path(home)
    models = load_calibrations(home)
    entry = {**entry, "stored_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    models.setdefault(model, {})[margin] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"version": 1, "models": models}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def calibrated_threshold(model: str, margin: str, home: Path | None = None) -> float | None:
    entry = load_calibrations(home).get(model, {}).get(margin)
    if isinstance(entry, dict) and isinstance(entry.get("threshold"), (int, float)):
        return float(entry["threshold"])
    return None


def bundled_threshold(model: str, margin: str) -> float:
    return THRESHOLDS.get(model, GENERIC_THRESHOLDS)[margin]


def calibrated_default(model: str, margin: str, *, model_key: str | None = None, home: Path | None = None) -> float | None:
    """A threshold stored by ``miner calibrate`` for the model (its alias, else its ``model_key``)
    and margin, else None. When there is one, jobs without ``--threshold`` use it instead of auto."""
    for name in (model, model_key):
        if name:
            value = calibrated_threshold(name, margin, home)
            if value is not None:
                return value
    return None


def default_threshold(model: str, margin: str, *, model_key: str | None = None, home: Path | None = None) -> float:
    """The model's fixed default: a calibrated threshold (:func:`calibrated_default`), else the
    bundled value. ``--threshold auto`` falls back to it when a job's scores allow no estimate."""
    value = calibrated_default(model, margin, model_key=model_key, home=home)
    return value if value is not None else bundled_threshold(model, margin)
