"""Progress output (miner/faces/progress.py): plain lines when stderr is not a terminal, bars on one."""

from __future__ import annotations

import io

from miner.faces.progress import Bars, PlainLines, progress_view, status_lines


def _status(state="running", embed_done=0, embed_items=0, reused=0, rate=None, workers=1):
    parts = {"src": {"done": embed_done, "total": 2, "items_done": embed_items, "items_total": 2000, "reused": reused}}
    return {
        "id": 7, "state": state, "workers": [{"name": f"w{i}", "units": 1} for i in range(workers)],
        "stages": [
            {"stage": "ingest", "done": 1, "total": 1, "items_done": 2000, "items_total": None, "reused": 0,
             "rate": 9000.0, "eta_s": None, "parts": {"src": {"done": 1, "total": 1, "items_done": 2000,
                                                             "items_total": None, "reused": 0}}},
            {"stage": "embed", "done": embed_done, "total": 2, "items_done": embed_items, "items_total": 2000,
             "reused": reused, "rate": rate, "eta_s": 12.0 if embed_done < 2 else None, "parts": parts},
        ],
    }


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_lines_one_per_stage_every_few_seconds_and_when_complete():
    out, clock = io.StringIO(), Clock()
    view = PlainLines(out, every=5.0, clock=clock)
    view.update(_status(state="queued", workers=0))
    view.update(_status(embed_done=0, embed_items=0))  # embed not started: no embed line
    clock.now = 1.0
    view.update(_status(embed_done=1, embed_items=1000, rate=400.0))
    clock.now = 2.0
    view.update(_status(embed_done=1, embed_items=1100, rate=410.0))  # moved, but within 5 s: no line
    clock.now = 3.0
    view.update(_status(state="done", embed_done=2, embed_items=2000, rate=420.0))  # complete: always shown
    view.update(_status(state="done", embed_done=2, embed_items=2000, rate=420.0))  # nothing new
    lines = out.getvalue().splitlines()
    assert lines == [
        "job 7: ingest src: 2,000 sentences, 1/1 shards, 9,000 sentences/s",
        "job 7: queued, workers seen: 0",
        "job 7: running, workers seen: 1",
        "job 7: embed src: 1,000/2,000 sentences (50%), 1/2 shards, 400 sentences/s, ETA 12s",
        "job 7: embed src: 2,000/2,000 sentences (100%), 2/2 shards, 420 sentences/s",
        "job 7: done, workers seen: 1",
    ]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_plain_lines_repeat_a_moving_stage_after_the_interval():
    out, clock = io.StringIO(), Clock()
    view = PlainLines(out, every=5.0, clock=clock)
    for second, items in ((0, 100), (2, 200), (5, 300), (6, 400), (10, 500)):
        clock.now = second
        view.update(_status(embed_done=1, embed_items=items, rate=100.0))
    embed = [line for line in out.getvalue().splitlines() if "embed" in line]
    assert [line.split(": ")[2].split(" ")[0] for line in embed] == ["100/2,000", "300/2,000", "500/2,000"]


def test_reused_stages_say_reused_instead_of_a_rate():
    out = io.StringIO()
    PlainLines(out).update(_status(embed_done=2, embed_items=2000, reused=2, rate=None))
    assert "job 7: embed src: 2,000/2,000 sentences (100%), 2/2 shards, reused" in out.getvalue().splitlines()
    bars_out = io.StringIO()
    bars = Bars(bars_out)
    bars.update(_status(embed_done=2, embed_items=2000, reused=2))
    bars.close()
    text = bars_out.getvalue()
    embed = [chunk for chunk in text.replace("\n", "\r").split("\r") if chunk.startswith("embed src")]
    assert embed and all("reused" in chunk and "sent/s" not in chunk for chunk in embed)


def test_the_view_follows_the_stream():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress_view(io.StringIO()), PlainLines)
    assert isinstance(progress_view(Tty()), Bars)


def test_status_text_shows_reused_counts():
    status = _status(state="done", embed_done=2, embed_items=2000, reused=2)
    status.update(src_lang="de", tgt_lang="en", model="muse", elapsed_s=3.2, src="a.de", tgt="b.en", pairs=None,
                  threshold={"method": "auto", "value": None})
    lines = status_lines(status)
    assert lines[0] == "job 7  done  de-en  model muse  elapsed 3.2s"
    assert any(line.strip().startswith("embed") and "(2 reused)" in line for line in lines)
    assert lines[-1] == "  threshold: auto (chosen when the job finishes)"


def test_bars_agree_with_the_status_table():
    """`status --watch` bars read `0%| 300/?` for a finished ingest, `0.00sent` at the start, and
    their rates (tqdm's, from when the bar appeared: 59 sentences/s) differed from the table's
    (the stage's: 39,350/s). Now a finished part is 100% of what it counted, and the rate and ETA
    are the status's."""
    out = io.StringIO()
    bars = Bars(out)
    bars.update(_status(embed_done=0, embed_items=0))
    bars.update(_status(embed_done=1, embed_items=1000, rate=39350.0))
    bars.close()
    chunks = [chunk.strip() for chunk in out.getvalue().replace("\n", "\r").split("\r") if chunk.strip()]
    ingest = [c for c in chunks if c.startswith("ingest src")]
    embed = [c for c in chunks if c.startswith("embed src")]
    assert ingest and all("100%" in c and "2,000/2,000 sentences, 1/1 shards, 9,000 sentences/s" in c for c in ingest)
    assert all("?" not in c and "sent/s" not in c and "it/s" not in c and "0.00" not in c for c in ingest + embed)
    assert embed[0].startswith("embed src      :   0%|") and "0/2,000 sentences, 0/2 shards, ETA 12s" in embed[0]
    assert "1,000/2,000 sentences, 1/2 shards, 39,350 sentences/s, ETA 12s" in embed[-1]
    full = {**_status(embed_done=1, embed_items=1000, rate=39350.0), "src_lang": "de", "tgt_lang": "en", "model": "muse",
            "elapsed_s": 1.0, "src": "a.de", "tgt": "b.en", "pairs": None}
    assert "39,350/s" in "\n".join(status_lines(full))  # the table beneath the bars: the same rate
