"""bitext-miner: find translated sentence pairs in two monolingual corpora."""

__version__ = "0.1.0"
