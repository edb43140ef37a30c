"""Helpers of the quality-tool tests: mine a job in-process (no Celery) and build BUCC-style cases
from the Tatoeba test data (tests/data) with their gold files."""

from __future__ import annotations

import random
from pathlib import Path

from miner.pipeline import orchestration, steps
from miner.runtime.config import Config
from miner.embedding.encoders import resolve_model
from miner.pipeline.jobs import JobOptions, create_job
from miner.runtime.migrate import ensure_schema

from .conftest import DISTRACTORS, TATOEBA, read_lines

STEP_FUNCTIONS = steps.STEP_FUNCTIONS


def config() -> Config:
    """The configuration of the current environment (MINER_HOME), schema created."""
    cfg = Config.from_env()
    cfg.ensure_dirs()
    ensure_schema(cfg.db_url)
    return cfg


def mine_in_process(cfg: Config, src: Path, tgt: Path, src_lang: str, tgt_lang: str = "en", **overrides) -> int:
    """Run every task of a new job in this process, through the workers' stage hand-over."""
    options = dict(src_lang=src_lang, tgt_lang=tgt_lang, model="muse", model_key=resolve_model("muse").key,
                   k=4, margin="ratio", retrieval="max", threshold=1.05)
    options.update(overrides)
    job_id = create_job(cfg, src, tgt, JobOptions(**options))
    queue: list = []

    def send(stage, units):
        queue.extend((stage, args) for args in units)

    assert orchestration.hand_over(cfg, job_id, None, "ingest", send)
    while queue:
        stage, args = queue.pop(0)
        STEP_FUNCTIONS[stage](cfg, job_id, *args)
        orchestration.advance(cfg, job_id, stage, send)
    return job_id


def tatoeba_case(folder: Path, lang: str, n_distractors: int = 5000, seed: int = 0) -> dict:
    """Tatoeba LANG-eng as a BUCC-style case: source = the LANG lines; target = their English
    partners and ``n_distractors`` English distractors, shuffled. Writes the gold twice: as 1-based
    line ids (``gold.ids``) and as text pairs (``gold.txt``). Returns paths and the gold pairs as
    (source line, target line), 0-based, and as text."""
    folder.mkdir(parents=True, exist_ok=True)
    src_lines = read_lines(TATOEBA / f"tatoeba.{lang}-eng.{lang}")
    eng_lines = read_lines(TATOEBA / f"tatoeba.{lang}-eng.eng")
    target = [(line, i) for i, line in enumerate(eng_lines)]
    target += [(line, None) for line in read_lines(DISTRACTORS)[:n_distractors]]
    random.Random(seed).shuffle(target)
    position = {i: pos for pos, (_, i) in enumerate(target) if i is not None}
    src, tgt = folder / f"src.{lang}", folder / "tgt.eng"
    src.write_text("".join(line + "\n" for line in src_lines), encoding="utf-8")
    tgt.write_text("".join(line + "\n" for line, _ in target), encoding="utf-8")
    gold_lines = [(i, position[i]) for i in range(len(src_lines))]
    ids, txt = folder / "gold.ids", folder / "gold.txt"
    ids.write_text("".join(f"{s + 1}\t{t + 1}\n" for s, t in gold_lines), encoding="utf-8")
    txt.write_text("".join(f"{s}\t{e}\n" for s, e in zip(src_lines, eng_lines)), encoding="utf-8")
    gold_text = {(" ".join(s.split()), " ".join(e.split())) for s, e in zip(src_lines, eng_lines)}
    return {"src": src, "tgt": tgt, "gold_ids": ids, "gold_txt": txt, "gold_lines": gold_lines,
            "gold_text": gold_text, "src_lines": src_lines, "tgt_lines": [line for line, _ in target]}
