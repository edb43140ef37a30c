"""The stages of a job, declared once.

Each :class:`Stage` says what it is made of and what runs it: its name, the Celery task that runs
one of its units, the queue that task goes to, the function that runs a unit, what a unit is (one
per side, per shard of a side, per shard of a query side in each direction, or one for the job),
and what determines its artifacts. Everything that lists stages is derived from :data:`STAGES`:

* their order and hand-over (:data:`miner.pipeline.orchestration.STAGES`, ``NEXT_STAGE``), the units of a
  stage and their names, the planned size of each stage (:func:`miner.pipeline.orchestration.plan`);
* the function each unit runs (:data:`miner.pipeline.steps.STEP_FUNCTIONS`);
* the Celery tasks, their names and routes (``miner/workers/tasks.py``, ``dispatch.TASK_NAMES``,
  ``settings.task_routes``).

Adding a stage is one declaration here, its run function in a module of its own, and a test
(docs/architecture.md, "How to add a stage"). No Celery and no database here.
"""

from __future__ import annotations

import dataclasses
import importlib

from miner.runtime.config import DEFAULT_QUEUE, EMBED_QUEUE

SIDES = ("src", "tgt")
DIRECTIONS = {"fwd": ("src", "tgt"), "bwd": ("tgt", "src")}  # direction -> (query side, target side)

#: What one unit of a stage is (its task's arguments after the job id):
#: ``side`` (side,); ``side-shard`` (side, start, end); ``direction-shard`` (direction, start, end)
#: over the query side's shards; ``job`` ().
UNIT_SHAPES = ("side", "side-shard", "direction-shard", "job")


def shard_spans(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(0, s), (s, 2s), ...]`` covering ``range(n)``."""
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a job.

    Attributes:
        name: the stage's name (``job_steps.stage``, ``miner status``).
        task: the Celery task name that runs one unit (kept stable: workers of two versions in one
            cluster route by it).
        run: ``"module:function"``, the function that runs one unit: ``fn(cfg, job_id, *args)``.
        unit: what one unit is (:data:`UNIT_SHAPES`).
        queue: the broker queue of its tasks.
        artifacts: what determines the files it writes (so another job reuses them), for readers.
    """

    name: str
    task: str
    run: str
    unit: str
    queue: str = DEFAULT_QUEUE
    artifacts: str = ""

    def __post_init__(self) -> None:
        if self.unit not in UNIT_SHAPES:
            raise ValueError(f"stage {self.name}: unknown unit shape {self.unit!r}; use one of {', '.join(UNIT_SHAPES)}")

    def function(self):
        """The run function (imported on first use: the stages' modules import this one)."""
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)

    def units(self, sizes: dict[str, int] | None, shard_size: int) -> list[tuple]:
        """The arguments (after the job id) of every unit, given the sides' sentence counts
        (``sizes``; not needed by ``side`` and ``job`` stages, which run before the sides are known)."""
        if self.unit == "side":
            return [(side,) for side in SIDES]
        if self.unit == "job":
            return [()]
        if sizes is None:
            raise ValueError(f"stage {self.name}: its units need the sides' sizes")
        if self.unit == "side-shard":
            return [(side, s, e) for side in SIDES for s, e in shard_spans(sizes[side], shard_size)]
        return [(direction, s, e) for direction, (query, _) in DIRECTIONS.items()
                for s, e in shard_spans(sizes[query], shard_size)]

    def unit_name(self, args: tuple) -> str:
        """The ``job_steps.unit`` of the unit with ``args``: ``src``, ``fwd:20000``, ``all``."""
        if self.unit == "job":
            return "all"
        if self.unit == "side":
            return str(args[0])
        return f"{args[0]}:{args[1]}"

    def planned(self, sizes: dict[str, int], shard_size: int) -> dict[str, tuple[int, int]]:
        """``{part: (units, items)}`` of the stage (what ``job_stages`` records when it is planned):
        per side, per direction (items: the query side's sentences), or ``all`` (items counted by
        the stage itself)."""
        count = {side: (len(shard_spans(n, shard_size)), n) for side, n in sizes.items()}
        if self.unit == "side-shard":
            return count
        if self.unit == "side":
            return {side: (1, n) for side, n in sizes.items()}
        if self.unit == "direction-shard":
            return {direction: count[query] for direction, (query, _) in DIRECTIONS.items()}
        return {"all": (1, 0)}


#: The stages in the order they run; each hands over to the next.
STAGES: tuple[Stage, ...] = (
    Stage("ingest", "miner.ingest", "miner.pipeline.corpora:ingest", "side",
          artifacts="none: the sentences go to the database, keyed by the file's content and reader settings"),
    Stage("embed", "miner.embed", "miner.pipeline.steps:embed", "side-shard", queue=EMBED_QUEUE,
          artifacts="the corpus, the model's content key, the shard and the storage dtype"),
    Stage("index", "miner.build_index", "miner.pipeline.steps:build_index", "side",
          artifacts="the corpus, the model and the index spec (flat, IVF, IVF-PQ and their parameters)"),
    Stage("knn", "miner.knn", "miner.pipeline.steps:knn", "direction-shard",
          artifacts="both corpora, the model, k, the shard and the index variant"),
    Stage("score", "miner.score", "miner.pipeline.steps:score", "direction-shard",
          artifacts="the job's request key (margin scores depend on the job's options)"),
    Stage("finish", "miner.finish", "miner.pipeline.steps:finish", "job",
          artifacts="none: the candidates and the cut go to the database"),
)

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
#: The stage each one hands over to.
NEXT_STAGE: dict[str, str] = {a.name: b.name for a, b in zip(STAGES, STAGES[1:])}
#: The first stage: it runs before the sides' sizes are known; the others are planned when it ends.
FIRST = STAGES[0].name


#: Every queue a stage's tasks go to, the default one first (what ``miner worker`` consumes).
QUEUES: tuple[str, ...] = tuple(dict.fromkeys((DEFAULT_QUEUE, *(s.queue for s in STAGES))))


def stage(name: str) -> Stage:
    """The declaration of stage ``name`` (ValueError for an unknown one)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(NAMES)}") from None
