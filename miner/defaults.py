"""Default option values. Thresholds were tuned on the shared Tatoeba data only (see README)."""

from __future__ import annotations

K = 4
SHARD_SIZE = 10_000
MAX_LINE_LENGTH = 2_000  # characters, after whitespace normalisation
MARGIN = "ratio"
RETRIEVAL = "max"
MODEL = "muse"

# Default --threshold per model and margin. `muse` values: best F1 on the Tatoeba de/fr/es-en cases
# with 5,000 English distractors (bench/tune_threshold.py). Other models get LASER's usual values.
THRESHOLDS = {
    "muse": {"ratio": 1.05, "distance": 0.034, "absolute": 0.47},
}
GENERIC_THRESHOLDS = {"ratio": 1.05, "distance": 0.03, "absolute": 0.70}


def default_threshold(model: str, margin: str) -> float:
    """The threshold used when ``--threshold`` is not given."""
    return THRESHOLDS.get(model, GENERIC_THRESHOLDS)[margin]
