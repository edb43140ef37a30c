"""Celery side of bitext-miner: the app, thin tasks and the workflow of a job."""
