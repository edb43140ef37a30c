"""The Celery canvas of one job, built by plain functions.

``job_canvas``: ingest both sides in parallel, then ``plan`` -- which knows the shard counts and
replaces itself with ``mining_canvas``: embed every shard of both sides, build both indexes, kNN
every query shard in both directions, score every shard, finish. Each stage is a group; a group
followed by the next stage is a chord, so shards of both sides run in parallel on all workers.
"""

from __future__ import annotations

from celery import chain, group

from workers import tasks


def job_canvas(job_id: int):
    return chain(group(tasks.ingest.si(job_id, "src"), tasks.ingest.si(job_id, "tgt")), tasks.plan.si(job_id))


def mining_canvas(job_id: int, spans: dict[str, list[tuple[int, int]]]):
    src, tgt = spans["src"], spans["tgt"]
    embed = [tasks.embed.si(job_id, "src", s, e) for s, e in src] + [tasks.embed.si(job_id, "tgt", s, e) for s, e in tgt]
    index = [tasks.build_index.si(job_id, "src"), tasks.build_index.si(job_id, "tgt")]
    knn = [tasks.knn.si(job_id, "fwd", s, e) for s, e in src] + [tasks.knn.si(job_id, "bwd", s, e) for s, e in tgt]
    score = [tasks.score.si(job_id, "fwd", s, e) for s, e in src] + [tasks.score.si(job_id, "bwd", s, e) for s, e in tgt]
    return chain(group(embed), group(index), group(knn), group(score), tasks.finish.si(job_id))


def submit(job_id: int):
    """Send a job's canvas to the broker; returns the AsyncResult of its first part."""
    return job_canvas(job_id).apply_async()
