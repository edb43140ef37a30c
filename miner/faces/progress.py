"""How a job's progress and status look on the terminal (no click here).

* :func:`status_lines`: the text of ``miner status``;
* :class:`Bars`: one tqdm bar per stage and side (or direction), when stderr is a terminal;
* :class:`PlainLines`: when stderr is not a terminal (a log file, CI, a pipe), plain lines with no
  cursor escapes: one per stage part when it starts, at most one every few seconds while it runs,
  and one when it is complete; stages reused from an earlier job say ``reused``;
* :func:`watch`: follow a job until it finishes (``miner mine``, ``status --watch``, ``retry --wait``).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from miner.runtime.errors import MinerError
from miner.pipeline.threshold import threshold_note, threshold_warning
from miner.runtime.local_workers import log_tail

FINISHED = ("done", "failed", "cancelled")


def format_eta(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"ETA {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"ETA {seconds}s"


def status_lines(status: dict) -> list[str]:
    """``miner status JOB`` as lines of text (a warning about the cut is :func:`miner.pipeline.threshold.threshold_warning`)."""
    lines = [f"job {status['id']}  {status['state']}  {status['src_lang']}-{status['tgt_lang']}  "
             f"model {status['model']}  elapsed {status['elapsed_s']:.1f}s",
             f"  src {status['src']}",
             f"  tgt {status['tgt']}"]
    for stage in status["stages"]:
        total = stage["total"] if stage["total"] is not None else "?"
        items = f"{stage['items_done']:,}" + (f"/{stage['items_total']:,}" if stage["items_total"] else "")
        reused = f"  ({stage['reused']} reused)" if stage["reused"] else ""
        rate = f"  {stage['rate']:,.0f}/s" if stage.get("rate") else ""
        lines.append(f"  {stage['stage']:<7} {stage['done']:>5}/{total:<5} {items:>22}  "
                     f"{format_eta(stage['eta_s'])}{rate}{reused}")
        if len(stage.get("parts") or {}) > 1:
            for part, info in stage["parts"].items():
                part_items = f"{info['items_done']:,}" + (f"/{info['items_total']:,}" if info["items_total"] else "")
                lines.append(f"    {part:<5} {info['done']:>5}/{info['total']:<5} {part_items:>22}")
    if status.get("workers"):
        names = ", ".join(f"{w['name']} ({w['units']})" for w in status["workers"])
        lines.append(f"  workers seen: {len(status['workers'])}: {names}")
    if status.get("stalled"):
        lines.append(f"  stalled: {status['stalled']['hint']}")
    for lease in status.get("running") or []:
        lines.append(f"  running: {lease['stage']} {lease['unit']} on {lease['worker']} "
                     f"(heartbeat {lease['heartbeat_age_s']:.0f}s ago)")
    for stage, units in (status.get("missing") or {}).items():
        if units and status["state"] in ("failed", "cancelled"):
            shown = ", ".join(units[:10]) + (f" and {len(units) - 10} more" if len(units) > 10 else "")
            lines.append(f"  missing {stage} units: {shown} (`miner retry {status['id']}` runs them)")
    threshold = status.get("threshold") or {}
    if status["pairs"] is not None:
        value = threshold.get("value")
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "none"
        lines.append(f"  pairs: {status['pairs']:,} at threshold {shown} ({threshold_note(threshold)}); "
                     f"{status['candidates_stored']:,} candidates stored")
    elif threshold.get("method"):
        value = threshold.get("value")
        shown = f"{value:g} ({threshold['method']})" if isinstance(value, (int, float)) else (
            "auto (chosen when the job finishes)" if threshold["method"] == "auto" else threshold["method"])
        lines.append(f"  threshold: {shown}")
    if status.get("error"):
        lines.append(f"  error: {status['error']}")
    return lines


def threshold_lines(status: dict, min_score: float | None = None) -> tuple[str | None, str | None]:
    """(a warning about the cut or None, the line naming the job's cut and how it was chosen, or None)."""
    threshold = status.get("threshold") or {}
    warning = threshold_warning(status["id"], threshold)
    if min_score is not None:
        return warning, f"job {status['id']}: exported at --min-score {min_score:g}"
    if threshold.get("value") is not None:
        return warning, f"job {status['id']}: threshold {threshold['value']:.4g} ({threshold_note(threshold)})"
    return warning, None


def skip_lines(status: dict) -> list[str]:
    """One line per side that had lines skipped at ingest (blank, duplicates, too long, undecodable)."""
    lines = []
    for side, info in (status.get("corpora") or {}).items():
        if not info:
            continue
        skipped = {k: v for k, v in info["skipped"].items() if v}
        if skipped:
            parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
            lines.append(f"{side}: {info['sentences']} sentences kept; skipped {parts}")
    return lines


def _parts(status: dict):
    """(key, stage, info) of every stage part, in order: ``embed src``, ``knn fwd``, ``finish``..."""
    for stage in status["stages"]:
        for part, info in (stage.get("parts") or {}).items():
            yield (f"{stage['stage']} {part}" if part != "all" else stage["stage"]), stage, info


def _all_reused(info: dict) -> bool:
    return bool(info.get("done")) and info.get("reused", 0) >= info["done"]


#: A stage part's bar: sentences done of its total, and after them what ``miner status`` shows
#: (shards, the stage's rate, its ETA) rather than tqdm's own rate, measured from when the bar
#: appeared (a bar drawn after half a stage said 59 sentences/s where the stage ran at 39,350/s).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:,}/{total:,} sentences{postfix}"
#: The same while the total is not known yet (ingest counts the sentences as it reads them).
OPEN_FORMAT = "{desc}: {n:,} sentences{postfix}"


def part_postfix(stage: dict, info: dict) -> str:
    """``3/8 shards, 39,350 sentences/s, ETA 12s`` (``reused`` instead of a rate when every unit
    done was reused)."""
    complete = bool(info["total"]) and info["done"] >= info["total"]
    text = f"{info['done']}/{info['total']} shards"
    if _all_reused(info):
        return text + ", reused"
    if stage.get("rate"):
        text += f", {stage['rate']:,.0f} sentences/s"
    if not complete and stage.get("eta_s") is not None:
        text += f", {format_eta(stage['eta_s'])}"
    return text


class Bars:
    """One tqdm bar per stage and side (or direction), in sentences, with rate and ETA; a job bar
    counting shards of every stage, with the workers seen. Parts reused from an earlier job show
    ``reused`` instead of a rate."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bars: dict = {}

    def update(self, status: dict) -> None:
        from tqdm import tqdm

        units_total = sum(stage["total"] or 0 for stage in status["stages"])
        units_done = sum(stage["done"] for stage in status["stages"])
        job_bar = self.bars.get("job")
        if job_bar is None:
            job_bar = self.bars["job"] = tqdm(total=units_total, desc=f"job {status['id']:<9}", unit="task", position=0,
                                              leave=True, file=self.stream, dynamic_ncols=True, mininterval=0.5)
        job_bar.total = units_total
        job_bar.update(units_done - job_bar.n)
        job_bar.set_postfix_str(f"{status['state']}, workers seen: {len(status.get('workers') or [])}", refresh=False)
        job_bar.refresh()
        for position, (key, stage, info) in enumerate(_parts(status), start=1):
            bar = self.bars.get(key)
            total = info["items_total"] or None
            if total is None and info["total"] and info["done"] >= info["total"]:
                total = info["items_done"]  # complete: what it counted is its total
            bar_format = BAR_FORMAT if total else OPEN_FORMAT
            if bar is None:  # drawn at once: with its count and postfix, not from 0 with none
                bar = self.bars[key] = tqdm(total=total, initial=info["items_done"], desc=f"{key:<15}",
                                            position=position, leave=True, file=self.stream, dynamic_ncols=True,
                                            mininterval=0.5, bar_format=bar_format, postfix=part_postfix(stage, info))
            bar.total = total
            bar.bar_format = bar_format
            bar.update(info["items_done"] - bar.n)
            bar.set_postfix_str(part_postfix(stage, info), refresh=False)
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class PlainLines:
    """Progress as plain lines, for a stderr that is not a terminal: a line per stage part when it
    starts, at most one every ``every`` seconds while it moves, one when it is complete; a job line
    when its state or the number of workers seen changes."""

    def __init__(self, stream: TextIO, every: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.every = every
        self.clock = clock
        self.shown: dict[str, tuple[float, str, bool]] = {}  # key -> (when, text, complete)
        self.job_line = None

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def update(self, status: dict) -> None:
        now = self.clock()
        for key, stage, info in _parts(status):
            if not info["done"] and not info["items_done"]:
                continue  # not started
            total = info["items_total"]
            complete = bool(info["total"]) and info["done"] >= info["total"]
            items = f"{info['items_done']:,}" + (f"/{total:,}" if total else "")
            percent = f" ({100 * info['items_done'] / total:.0f}%)" if total else ""
            text = f"{items} sentences{percent}, {part_postfix(stage, info)}"
            when, previous, was_complete = self.shown.get(key, (None, None, False))
            if was_complete or text == previous:
                continue
            if complete or when is None or now - when >= self.every:
                self._write(f"job {status['id']}: {key}: {text}")
                self.shown[key] = (now, text, complete)
        job_line = f"job {status['id']}: {status['state']}, workers seen: {len(status.get('workers') or [])}"
        if job_line != self.job_line:
            self._write(job_line)
            self.job_line = job_line

    def close(self) -> None:
        pass


def progress_view(stream: TextIO | None = None):
    """Bars on a terminal, plain lines elsewhere."""
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Bars(stream) if tty else PlainLines(stream)


def watch(get_status: Callable[[], dict], *, quiet: bool = False, workers: list | None = None,
          interval: float = 0.5, start_local: Callable[[], list] | None = None,
          alive: Callable[[], list] | None = None, check_every: float = 5.0) -> dict:
    """Show the job's progress until it finishes; returns the final status.

    ``workers``: local worker processes; an error when all of them exit before the job is done.
    ``start_local``: when given (no local workers yet), every ``check_every`` seconds ``alive()``
    pings the workers, and when none answers, ``start_local()`` starts local ones (added to
    ``workers``)."""
    view = None if quiet else progress_view()
    next_check = time.monotonic() + check_every
    try:
        while True:
            status = get_status()
            if view is not None:
                view.update(status)
            if status["state"] in FINISHED:
                return status
            if start_local is not None and not workers and time.monotonic() >= next_check:
                if not (alive() if alive else []):
                    status = get_status()
                    if status["state"] in FINISHED:
                        return status
                    if workers is not None:
                        workers.extend(start_local())
                    else:
                        workers = start_local()
                next_check = time.monotonic() + check_every
            if workers and all(p.poll() is not None for p in workers):
                status = get_status()  # a task may have finished the job as they exited
                if status["state"] in FINISHED:
                    return status
                codes = ", ".join(str(p.returncode) for p in workers)
                raise MinerError(
                    f"the local worker processes exited (exit code {codes}) while job {status['id']} was "
                    f"{status['state']}; then `miner retry {status['id']}`. Last lines of their logs:\n"
                    + "\n".join(log_tail(getattr(p, "log_path", None)) for p in workers)
                )
            time.sleep(interval)
    finally:
        if view is not None:
            view.close()
