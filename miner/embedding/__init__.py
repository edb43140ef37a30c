"""Sentence encoders: model names, loading, encoding."""
