"""The mining math: margins, retrieval, kNN, indexes and the automatic cut (arrays in, arrays out)."""
