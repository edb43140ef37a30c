"""Evaluate a job against gold pairs, and calibrate thresholds (``miner eval``, ``miner calibrate``).

Gold files: one pair per line, two tab-separated fields, blank lines ignored, UTF-8.

* ``ids`` -- BUCC style ``SRC_ID<TAB>TGT_ID``: the ids of the input rows when the side was read
  with ids of its own (``--input-format tsv`` with an id column, ``jsonl``; matched exactly, every
  occurrence of a repeated sentence included), so BUCC gold files work as they come with BUCC files
  mined directly. For a plain-text side the ids are line numbers, **1-based** by default (the first
  line is 1, as editors, ``grep -n`` and ``sed -n 1p`` count; ``--id-base 0`` for 0-based ids); a
  prefix such as ``de-`` is ignored there.
* ``text`` -- ``SOURCE<TAB>TARGET`` sentences, compared after the reader's whitespace normalisation.

``auto`` (the default) picks ``ids`` when every field of every line is such an id.

Matching is done on the job's sentences (the reader keeps one copy of each distinct line, with the
ids and line numbers of all its occurrences; for corpora read before those were stored, a repeated
line is resolved through its text when the input file is still there unchanged); gold pairs whose sentence is not
in the job at all (blank, too long, undecodable lines; text not found) cannot be found and count as
misses ("unreachable"). Precision = gold pairs among the exported pairs / exported pairs; recall =
gold pairs exported / distinct gold pairs (reachable or not); F1 their harmonic mean. Exported at
threshold t = the stored one-to-one candidates scoring >= t, as ``miner export --min-score t``.

With ``--sample`` the gold lists the pairs of a sample of source sentences only: precision is then
computed over exported pairs whose source sentence is in the gold (other pairs are not judged).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from sqlalchemy import func, select

from miner.runtime import defaults
from miner.runtime.config import Config
from miner.runtime.db import Candidate, Corpus, Job, Sentence, SentenceDuplicate, session_scope
from miner.embedding.encoders import ALIASES
from miner.runtime.errors import InputFileError, UsageError
from miner.io.export import load_done_job
from miner.io.reader import file_digest, normalise, open_text_stream
from miner.io.records import display_id
from miner.pipeline.spec import job_spec

GOLD_FORMATS = ("auto", "ids", "text")
_ID = re.compile(r"(?:[A-Za-z]{2,3}[-_])?(\d+)")


# --------------------------------------------------------------------------- gold files


@dataclass
class GoldFile:
    path: str
    format: str  # ids or text
    id_base: int
    pairs: list[tuple]  # (src id, tgt id) as written, or (src text, tgt text) normalised
    file_lines: list[int]  # the gold file's line number (1-based) of each pair, for messages

    def line_number(self, value: str, no: int) -> int:
        """A gold id of a plain-text side as a 0-based line number (``de-000012`` -> 11 when 1-based)."""
        match = _ID.fullmatch(value)
        if match is None:
            raise InputFileError(f"gold file {self.path}: line {no} is not two ids (SRC_ID<TAB>TGT_ID line numbers, "
                                 f"e.g. 12<TAB>40 or de-000012<TAB>en-000040): {value!r}; the job's input has "
                                 "no ids of its own on this side (mine it with --input-format tsv or jsonl)")
        line = int(match.group(1)) - self.id_base
        if line < 0:
            raise InputFileError(f"gold file {self.path}: line {no} has id 0, but ids are 1-based line numbers; "
                                 "pass --id-base 0 for 0-based ids")
        return line


def read_gold(path: str | Path, fmt: str = "auto", id_base: int = 1) -> GoldFile:
    """Parse a gold file (see the module docstring). Raises InputFileError (exit code 3) on a
    missing, empty or malformed file, naming the first bad line."""
    if fmt not in GOLD_FORMATS:
        raise UsageError(f"unknown gold format {fmt!r}; use one of {', '.join(GOLD_FORMATS)}")
    if id_base not in (0, 1):
        raise UsageError(f"--id-base must be 0 or 1, got {id_base}")
    if str(path) == "-":  # `zcat gold.tsv.gz | miner eval JOB --gold -`
        import sys

        path, data = Path("-"), sys.stdin.buffer.read()
        if not data.strip():
            raise InputFileError("gold file - (standard input) has no pairs (nothing was piped in)")
        return _parse_gold("standard input", data, fmt, id_base)
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"gold file not found: {path} -- check the path") from None
    except IsADirectoryError:
        raise InputFileError(f"gold file {path} is a directory") from None
    except OSError as exc:
        raise InputFileError(f"cannot read gold file {path}: {exc.strerror or exc}") from None
    return _parse_gold(path, data, fmt, id_base)


def _parse_gold(path, data: bytes, fmt: str, id_base: int) -> GoldFile:
    """:func:`read_gold` on the file's bytes; ``path`` names it in messages."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputFileError(f"gold file {path}: line {line} is not valid UTF-8") from None
    rows, numbers = [], []
    for no, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise InputFileError(
                f"gold file {path}: line {no} has {len(fields)} tab-separated field(s), expected 2 "
                "(SRC_ID<TAB>TGT_ID line numbers, or SOURCE<TAB>TARGET sentences)"
            )
        rows.append(fields)
        numbers.append(no)
    if not rows:
        raise InputFileError(f"gold file {path} has no pairs (it is empty or blank)")
    is_id = [all(_ID.fullmatch(f.strip()) for f in fields) for fields in rows]
    if fmt == "auto":
        fmt = "ids" if all(is_id) else "text"
    pairs: list[tuple] = []
    if fmt == "ids":
        for fields, no in zip(rows, numbers):
            ids = tuple(f.strip() for f in fields)
            if not all(ids):
                raise InputFileError(f"gold file {path}: line {no} has an empty id: {_clip(fields)}")
            pairs.append(ids)  # matched as they are, or read as line numbers (line_number), per side
    else:
        for fields, no in zip(rows, numbers):
            src, tgt = normalise(fields[0]), normalise(fields[1])
            if not src or not tgt:
                raise InputFileError(f"gold file {path}: line {no} has an empty side")
            pairs.append((src, tgt))
    return GoldFile(str(path), fmt, id_base, pairs, numbers)


def _clip(fields) -> str:
    text = "\t".join(fields)
    return repr(text if len(text) <= 80 else text[:77] + "...")


@dataclass
class ResolvedGold:
    """Gold pairs as (source idx, target idx) of the job's sentences."""

    pairs: set[tuple[int, int]]
    unreachable: int  # distinct gold pairs that cannot be found in the job's sentences
    gold: GoldFile

    @property
    def n(self) -> int:
        """The recall denominator: distinct gold pairs."""
        return len(self.pairs) + self.unreachable


def progress(iterable, total: int | None, desc: str, unit: str = "row"):
    """A progress bar on stderr when it is a terminal (long scans of big jobs), else the iterable."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, disable=None,
                mininterval=0.5, leave=False)


def _corpus(cfg: Config, corpus_id: int) -> Corpus:
    with session_scope(cfg.db_url) as s:
        return s.get(Corpus, corpus_id)


def _scan(cfg: Config, corpus_id: int, column, wanted: set) -> dict:
    """{value: idx} for the sentences of a corpus whose ``column`` value is in ``wanted`` (one pass)."""
    found = {}
    if not wanted:
        return found
    with session_scope(cfg.db_url) as s:
        total = s.scalar(select(Corpus.n_sentences).where(Corpus.id == corpus_id))
        query = select(column, Sentence.idx).where(Sentence.corpus_id == corpus_id).execution_options(yield_per=20000)
        for value, idx in progress(s.execute(query), total, "matching gold", "sent"):
            if value in wanted:
                found[value] = int(idx)
    return found


def _texts_of_lines(path: str, corpus: Corpus, lines: set[int]) -> dict[int, str] | None:
    """Normalised text of the given 0-based lines of the job's input file, or None when the file is
    gone or changed since the job read it."""
    try:
        from miner.io.storage import is_url

        if not (is_url(path) or Path(path).is_file()) or file_digest(path) != corpus.sha256:
            return None
    except InputFileError:
        return None
    replace = (corpus.settings or {}).get("on_decode_error") == "replace"
    out: dict[int, str] = {}
    last = max(lines)
    with open_text_stream(path) as fh:
        for no, raw in enumerate(fh):
            if no > last:
                break
            if no in lines:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    if not replace:
                        continue
                    text = raw.decode("utf-8", errors="replace")
                out[no] = normalise(text, strip_bom=no == 0)
    return out


def resolve_gold(cfg: Config, job: Job, gold: GoldFile, warn: Callable[[str], None] | None = None) -> ResolvedGold:
    """Map gold pairs onto the job's sentence indices (see the module docstring)."""
    warn = warn or (lambda message: None)
    sides = {"src": (job.src_corpus_id, job.src_path, 0), "tgt": (job.tgt_corpus_id, job.tgt_path, 1)}
    maps: dict[str, dict] = {}
    keys: dict[str, list] = {}
    for side, (corpus_id, path, i) in sides.items():
        wanted = {pair[i] for pair in gold.pairs}
        if gold.format == "text":
            maps[side] = _scan(cfg, corpus_id, Sentence.text, wanted)
            keys[side] = [pair[i] for pair in gold.pairs]
            continue
        corpus = _corpus(cfg, corpus_id)
        if has_input_ids(corpus):
            maps[side] = _scan_ids(cfg, corpus_id, wanted)
            keys[side] = [pair[i] for pair in gold.pairs]
            continue
        keys[side] = [gold.line_number(pair[i], no) for pair, no in zip(gold.pairs, gold.file_lines)]
        wanted = set(keys[side])
        n_lines = int((corpus.stats or {}).get("lines") or 0)
        if n_lines and max(wanted) >= n_lines:
            bad = next(no for line, no in zip(keys[side], gold.file_lines) if line >= n_lines)
            shown = max(wanted) + gold.id_base
            raise InputFileError(
                f"gold file {gold.path}: line {bad}: {side} id {shown} is past the end of {path} "
                f"({n_lines} lines, ids {gold.id_base}..{n_lines - 1 + gold.id_base}); is this the gold of job {job.id}? "
                f"(it read {path} as plain text, so its ids are line numbers; ID<TAB>TEXT files such as BUCC's are "
                "mined with --input-format tsv)"
            )
        by_line = _scan(cfg, corpus_id, Sentence.line_no, wanted)
        missing = wanted - set(by_line)
        if missing:  # later lines with the text of an earlier one (stored since reader version 2)
            by_line.update(_scan_duplicates(cfg, corpus_id, missing))
            missing = wanted - set(by_line)
        if missing and int((corpus.settings or {}).get("reader") or 1) < 2:
            texts = _texts_of_lines(path, corpus, missing)
            if texts is None:
                warn(f"{len(missing)} {side} gold line(s) are not among job {job.id}'s sentences and {path} is gone "
                     "or changed, so duplicates of earlier lines cannot be resolved; they count as misses")
            else:
                by_text = _scan(cfg, corpus_id, Sentence.text, set(texts.values()))
                for line, text in texts.items():
                    if text in by_text:
                        by_line[line] = by_text[text]
        maps[side] = by_line
    pairs: set[tuple[int, int]] = set()
    unreachable: set[tuple] = set()
    for a, b in zip(keys["src"], keys["tgt"]):
        s, t = maps["src"].get(a), maps["tgt"].get(b)
        if s is None or t is None:
            unreachable.add((a, b))
        else:
            pairs.add((s, t))
    return ResolvedGold(pairs, len(unreachable), gold)


def load_gold(cfg: Config, job: Job, path, fmt: str, id_base: int, warn=None) -> tuple[GoldFile, ResolvedGold]:
    """Read and resolve a gold file for a job. ``auto`` takes a file whose fields do not look like
    line numbers for sentence pairs; when the job read both sides with ids of their own and not one
    gold pair is found as text, the fields are the input ids (of any shape) instead."""
    gold = read_gold(path, fmt, id_base)
    resolved = resolve_gold(cfg, job, gold, warn)
    if fmt == "auto" and gold.format == "text" and not resolved.pairs and all(
            has_input_ids(_corpus(cfg, cid)) for cid in (job.src_corpus_id, job.tgt_corpus_id)):
        as_ids = read_gold(path, "ids", id_base)
        found = resolve_gold(cfg, job, as_ids, warn)
        if found.pairs:
            return as_ids, found
    return gold, resolved


def has_input_ids(corpus: Corpus) -> bool:
    """Whether a corpus was read with ids of its own (TSV with an id column, JSONL), so gold ids are
    matched as they are rather than read as line numbers."""
    settings = corpus.settings or {}
    fmt = settings.get("input_format", "text")
    return fmt == "jsonl" or (fmt == "tsv" and "id" in (settings.get("columns") or ()))


def _scan_ids(cfg: Config, corpus_id: int, wanted: set) -> dict:
    """{id: idx} for the wanted ids of a corpus read with ids: every occurrence of each sentence
    (a JSONL row without an id has its 1-based line number as id)."""
    found = {}
    with session_scope(cfg.db_url) as s:
        for table in (Sentence, SentenceDuplicate):
            query = (select(table.ext_id, table.line_no, table.idx).where(table.corpus_id == corpus_id)
                     .execution_options(yield_per=20000))
            for ext_id, line_no, idx in s.execute(query):
                key = display_id(ext_id, int(line_no))
                if key in wanted:
                    found[key] = int(idx)
    return found


def _scan_duplicates(cfg: Config, corpus_id: int, wanted: set) -> dict:
    """{line: idx} of the repeated lines of a corpus that are in ``wanted`` (0-based lines)."""
    with session_scope(cfg.db_url) as s:
        rows = s.execute(select(SentenceDuplicate.line_no, SentenceDuplicate.idx)
                         .where(SentenceDuplicate.corpus_id == corpus_id).execution_options(yield_per=20000))
        return {int(line): int(idx) for line, idx in rows if line in wanted}


# --------------------------------------------------------------------------- curves


def load_candidates(cfg: Config, job_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source idx, target idx, score) of every stored candidate of the job."""
    with session_scope(cfg.db_url) as s:
        total = s.scalar(select(func.count()).select_from(Candidate).where(Candidate.job_id == job_id))
        rows = list(progress(s.execute(
            select(Candidate.src_idx, Candidate.tgt_idx, Candidate.score).where(Candidate.job_id == job_id)
            .execution_options(yield_per=50000)
        ), total, f"job {job_id} candidates", "pair"))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    arr = np.array(rows, dtype=np.float64)
    return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2]


class Curve:
    """Precision, recall and F1 of a job's candidates as a function of the threshold."""

    def __init__(self, scores: np.ndarray, hits: np.ndarray, n_gold: int) -> None:
        order = np.argsort(-scores, kind="stable")
        self.desc = scores[order]
        self.asc = self.desc[::-1].copy()
        self.cum = np.concatenate(([0], np.cumsum(hits[order], dtype=np.int64)))
        self.n_gold = n_gold
        self.n = int(scores.shape[0])

    def counts(self, thresholds) -> tuple[np.ndarray, np.ndarray]:
        """(gold pairs exported, pairs exported) when keeping scores >= each threshold."""
        t = np.asarray(thresholds, dtype=np.float64)
        exported = self.n - np.searchsorted(self.asc, t, side="left")
        return self.cum[exported], exported

    def f1(self, thresholds) -> np.ndarray:
        tp, exported = self.counts(thresholds)
        return 2.0 * tp / np.maximum(exported + self.n_gold, 1)

    def at(self, threshold: float) -> dict:
        tp, exported = (int(v[0]) for v in self.counts([threshold]))
        return {"threshold": float(threshold), **prf(tp, exported, self.n_gold)}

    def best(self) -> dict:
        """The oracle: the threshold (a candidate score) with the highest F1; on a tie the highest."""
        if self.n == 0:
            return self.at(math.inf)
        cands = np.unique(self.desc)
        f1 = self.f1(cands)
        i = len(f1) - 1 - int(np.argmax(f1[::-1]))
        return self.at(float(cands[i]))


def prf(tp: int, exported: int, n_gold: int) -> dict:
    p = tp / exported if exported else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "gold_found": tp, "exported": exported}


def job_curve(cfg: Config, job: Job, resolved: ResolvedGold, sample: bool = False) -> tuple[Curve, np.ndarray]:
    """The job's curve against the gold, and the candidate scores it is built on."""
    src, tgt, scores = load_candidates(cfg, job.id)
    gold = resolved.pairs
    hits = np.fromiter(((int(s), int(t)) in gold for s, t in zip(src, tgt)), dtype=bool, count=len(src))
    if sample:
        judged_sources = {s for s, _ in gold}
        keep = np.fromiter((int(s) in judged_sources for s in src), dtype=bool, count=len(src))
        scores, hits = scores[keep], hits[keep]
    return Curve(scores, hits, resolved.n), scores


def nice_step(span: float, rows: int = 20) -> float:
    """A round step (1, 2 or 5 x 10^k) giving about ``rows`` thresholds over ``span``."""
    if span <= 0:
        return 0.01
    raw = span / rows
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if mult * power >= raw:
            return mult * power
    return 10 * power


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def threshold_grid(curve: Curve, scores: np.ndarray, hit_scores: np.ndarray, marks: list[float],
                   step: float | None = None) -> list[float]:
    """Thresholds from about the lowest score of a found gold pair to the 99.5th percentile of the
    scores, on a round step, always covering ``marks`` (job threshold, best threshold)."""
    if curve.n == 0:
        return sorted(set(marks))
    lo = float(np.quantile(hit_scores, 0.01)) if hit_scores.size else float(scores.min())
    hi = float(np.quantile(scores, 0.995))
    lo, hi = min([lo, *marks]), max([hi, *marks])
    step = step or nice_step(hi - lo)
    first = (math.floor(lo / step) - 1) * step
    count = int(math.ceil((hi - first) / step)) + 1
    if count > 1000:
        raise UsageError(f"--step {step} gives {count} thresholds; use a larger step")
    digits = _decimals(step) + 1
    return [round(first + i * step, digits) for i in range(count)]


# --------------------------------------------------------------------------- eval


def evaluate(cfg: Config, job_id: int, gold_path: str, *, fmt: str = "auto", id_base: int = 1, sample: bool = False,
             step: float | None = None, warn: Callable[[str], None] | None = None) -> dict:
    """Everything ``miner eval`` shows, as a JSON-ready dict."""
    job = load_done_job(cfg, job_id, "evaluate")
    gold, resolved = load_gold(cfg, job, gold_path, fmt, id_base, warn)
    curve, scores = job_curve(cfg, job, resolved, sample)
    from miner.pipeline.threshold import effective_threshold, threshold_method

    threshold = effective_threshold(job)
    at_threshold = curve.at(threshold if threshold is not None else -math.inf)
    best = curve.best()
    hit_scores = curve.desc[np.diff(curve.cum) > 0]
    marks = [t for t in (threshold, best["threshold"]) if t is not None and math.isfinite(t)]
    grid = threshold_grid(curve, scores, hit_scores, marks, step)
    return {
        "job": job.id,
        "src_lang": job.src_lang,
        "tgt_lang": job.tgt_lang,
        "model": job.model,
        "margin": job_spec(job).margin,
        "gold": {
            "path": gold.path,
            "format": gold.format,
            "id_base": gold.id_base if gold.format == "ids" else None,
            "lines": len(gold.pairs),
            "pairs": resolved.n,
            "reachable": len(resolved.pairs),
            "unreachable": resolved.unreachable,
            "sample": sample,
        },
        "candidates": curve.n,
        "threshold": threshold,
        "threshold_method": (job.threshold_info or {}).get("method") or threshold_method(job.options or {}),
        "at_threshold": at_threshold,
        "best": best,
        "curve": [curve.at(t) for t in grid],
    }


def format_eval(result: dict) -> str:
    g = result["gold"]
    lines = [
        f"job {result['job']}  {result['src_lang']}-{result['tgt_lang']}  model {result['model']}  "
        f"margin {result['margin']}  {result['candidates']:,} candidates",
        f"gold {g['path']}: {g['pairs']:,} pairs ({g['format']}"
        + (f", {g['id_base']}-based ids" if g["format"] == "ids" else "")
        + (f"; {g['unreachable']:,} not among the job's sentences" if g["unreachable"] else "")
        + ("; sample: only pairs whose source is in the gold are judged" if g["sample"] else "") + ")",
        "",
        f"  {'threshold':>10}  {'P':>6}  {'R':>6}  {'F1':>6}  {'exported':>9}  {'gold found':>10}",
    ]

    def row(entry: dict, note: str = "") -> str:
        return (f"  {entry['threshold']:>10.4f}  {100 * entry['precision']:6.2f}  {100 * entry['recall']:6.2f}  "
                f"{100 * entry['f1']:6.2f}  {entry['exported']:>9,}  {entry['gold_found']:>10,}{note}")

    for entry in result["curve"]:
        lines.append(row(entry))
    lines.append("")
    if result["threshold"] is not None:
        method = result.get("threshold_method")
        lines.append(row(result["at_threshold"], "  <- job threshold" + (f" ({method})" if method else "")))
    lines.append(row(result["best"], "  <- best threshold (highest F1)"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- calibrate


def model_name(job: Job) -> str:
    """The name a calibration is stored under: the alias (muse, minilm) or the model's cache key."""
    name = (job.model or "").strip()
    return name if name in ALIASES else job_spec(job).model_key or name


def grid_neighbours(t: float, decimals: int) -> list[float]:
    scale = 10**decimals
    lo = math.floor(round(t * scale, 6))
    return [round(lo / scale, decimals), round((lo + 1) / scale, decimals)]


def calibrate(cfg: Config, entries: list[tuple[int, str]], *, fmt: str = "auto", id_base: int = 1,
              sample: bool = False, decimals: int | None = None, store: bool = True,
              warn: Callable[[str], None] | None = None) -> dict:
    """One threshold for the model and margin of the given dev jobs: the value maximising the mean
    F1 over the jobs, rounded to ``decimals`` (the better of the two neighbouring round values).
    Stored as that model's default for that margin unless ``store`` is False."""
    if not entries:
        raise UsageError("give at least one dev job and its gold file")
    jobs, curves = [], []
    for job_id, gold_path in entries:
        job = load_done_job(cfg, job_id, "calibrate on")
        gold, resolved = load_gold(cfg, job, gold_path, fmt, id_base, warn)
        curve, _ = job_curve(cfg, job, resolved, sample)
        if curve.n == 0:
            raise UsageError(f"job {job_id} has no candidates to calibrate on")
        jobs.append((job, gold_path, resolved))
        curves.append(curve)
    models = {model_name(job) for job, _, _ in jobs}
    margins = {job_spec(job).margin for job, _, _ in jobs}
    if len(models) > 1 or len(margins) > 1:
        raise UsageError("the dev jobs use different models or margins ("
                         + ", ".join(f"job {j.id}: {model_name(j)}/{job_spec(j).margin}" for j, _, _ in jobs)
                         + "); calibrate each model and margin on its own")
    model, margin = models.pop(), margins.pop()
    decimals = defaults.DECIMALS.get(margin, 2) if decimals is None else decimals
    cands = np.unique(np.concatenate([c.desc for c in curves]))
    mean = np.mean([c.f1(cands) for c in curves], axis=0)
    i = len(mean) - 1 - int(np.argmax(mean[::-1]))
    raw = float(cands[i])
    options = []
    for t in grid_neighbours(raw, decimals):
        m = float(np.mean([c.f1([t])[0] for c in curves]))
        options.append((-m, abs(t - raw), t))
    threshold = sorted(options)[0][2]
    per_job = []
    for (job, gold_path, resolved), curve in zip(jobs, curves):
        per_job.append({"job": job.id, "langs": f"{job.src_lang}-{job.tgt_lang}", "gold": str(gold_path),
                        "gold_pairs": resolved.n, "at_recommended": curve.at(threshold), "oracle": curve.best()})
    result = {
        "model": model,
        "margin": margin,
        "threshold": threshold,
        "threshold_unrounded": raw,
        "mean_f1": float(np.mean([j["at_recommended"]["f1"] for j in per_job])),
        "previous_default": defaults.default_threshold(model, margin, home=cfg.home),
        "bundled_default": defaults.bundled_threshold(model, margin),
        "jobs": per_job,
        "stored": None,
    }
    if store:
        entry = {"threshold": threshold, "mean_f1": result["mean_f1"], "sample": sample,
                 "jobs": [{"job": j["job"], "langs": j["langs"], "gold": j["gold"],
                           "f1": j["at_recommended"]["f1"], "oracle_f1": j["oracle"]["f1"]} for j in per_job]}
        result["stored"] = str(defaults.store_calibration(model, margin, entry, home=cfg.home))
    return result


def format_calibration(result: dict) -> str:
    lines = [f"model {result['model']}, margin {result['margin']}: recommended threshold {result['threshold']:g} "
             f"(mean F1 {100 * result['mean_f1']:.2f}; unrounded optimum {result['threshold_unrounded']:.4f})",
             f"  {'job':>5}  {'langs':<7}  {'F1 at rec.':>10}  {'P':>6}  {'R':>6}  {'oracle thr':>10}  {'oracle F1':>9}"]
    for j in result["jobs"]:
        a, o = j["at_recommended"], j["oracle"]
        lines.append(f"  {j['job']:>5}  {j['langs']:<7}  {100 * a['f1']:10.2f}  {100 * a['precision']:6.2f}  "
                     f"{100 * a['recall']:6.2f}  {o['threshold']:10.4f}  {100 * o['f1']:9.2f}")
    if result["stored"]:
        lines.append(f"stored as the default of {result['model']}/{result['margin']} in {result['stored']} "
                     f"(was {result['previous_default']:g}; bundled {result['bundled_default']:g}); "
                     "new jobs without --threshold use it")
    else:
        lines.append(f"not stored (--dry-run); the current default is {result['previous_default']:g}")
    return "\n".join(lines)
