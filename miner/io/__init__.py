"""Input and output: reading corpora (text, TSV, JSONL, streams, URLs), artifacts and object storage, export and its filters."""
