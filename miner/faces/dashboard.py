"""The dashboard of ``miner serve`` (:mod:`miner.faces.api`): server-rendered HTML and one small script.

* ``/`` -- the jobs table; the script reads ``/api/jobs`` every second and updates the rows (state,
  progress, pairs) and adds new jobs, without reloading.
* ``/jobs/{id}`` -- one job: a bar per stage with its units, sentences, rate and ETA (updated from
  ``/api/jobs/{id}``), and once it is done the score histogram with the threshold (the PNG of
  ``miner report``), sample pairs per score band and export links.
* ``/login`` -- with ``MINER_API_TOKEN`` set: a form that keeps the token in a cookie (HttpOnly,
  SameSite=Strict) so the browser can read pages and GET ``/api`` calls.

Corpus text and paths are escaped (``html.escape``) on the server, and the script only ever sets
``textContent``; a Content-Security-Policy allows no inline script.
"""

from __future__ import annotations

import html
import math
from typing import Callable
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from miner.runtime.errors import JobNotFound, MinerError
from miner.pipeline.threshold import threshold_note, threshold_warning

CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
TOKEN_COOKIE = "miner_token"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 34em; overflow-wrap: anywhere; }
.bar { width: 14em; height: .9em; background: #eee; border-radius: 3px; overflow: hidden; display: inline-block;
       vertical-align: middle; }
.bar > span { display: block; height: 100%; width: 0; background: #1b9e77; transition: width .4s; }
.state { font-weight: 600; } .state-done { color: #1b7e57; } .state-failed { color: #c0392b; }
.state-running { color: #2c6fbb; } .state-cancelled { color: #777; } .state-queued { color: #a67c00; }
.note { color: #555; font-size: .9em; } .error { color: #c0392b; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
nav a { margin-right: 1em; }
"""

SCRIPT = r"""
"use strict";
function text(el, value) { if (el && el.textContent !== String(value)) el.textContent = String(value); }
function fmtSeconds(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s); if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}
function setState(el, state) {
  text(el, state); el.className = "state state-" + state; el.dataset.state = state;
}
function setBar(bar, share) {
  const pct = Math.max(0, Math.min(100, 100 * (share || 0)));
  bar.firstElementChild.style.width = pct.toFixed(1) + "%"; bar.title = pct.toFixed(0) + "%";
}
function cell(row, cls) { const td = document.createElement("td"); if (cls) td.className = cls; row.appendChild(td); return td; }
function jobRow(job) {
  const row = document.createElement("tr"); row.id = "job-" + job.id; row.dataset.job = job.id;
  const link = document.createElement("a"); link.href = "/jobs/" + job.id; link.textContent = job.id;
  cell(row, "num").appendChild(link);
  const state = document.createElement("span"); state.className = "state"; cell(row).appendChild(state);
  cell(row, "langs"); cell(row, "model");
  const bar = document.createElement("span"); bar.className = "bar"; bar.appendChild(document.createElement("span"));
  const progress = cell(row, "progress"); progress.appendChild(bar);
  cell(row, "num pairs"); cell(row, "created"); cell(row, "error text");
  return row;
}
function updateRow(row, job) {
  setState(row.querySelector(".state"), job.state);
  text(row.querySelector(".langs"), job.langs); text(row.querySelector(".model"), job.model);
  setBar(row.querySelector(".bar"), job.progress);
  text(row.querySelector(".pairs"), job.pairs === null || job.pairs === undefined ? "" : job.pairs.toLocaleString("en"));
  text(row.querySelector(".created"), (job.created_at || "").slice(0, 19).replace("T", " "));
  text(row.querySelector(".error"), job.error || "");
}
async function refreshJobs() {
  const body = document.getElementById("jobs-body");
  const params = new URLSearchParams(window.location.search);
  const state = params.get("state");
  try {
    const response = await fetch("/api/jobs?limit=100" + (state ? "&state=" + encodeURIComponent(state) : ""),
                                 {credentials: "same-origin"});
    if (!response.ok) { text(document.getElementById("status"), "cannot read /api/jobs: HTTP " + response.status); return; }
    const jobs = await response.json();
    let previous = null;
    for (const job of jobs) {
      let row = document.getElementById("job-" + job.id);
      if (!row) {
        row = jobRow(job);
        if (previous) previous.after(row); else body.prepend(row);
      }
      updateRow(row, job); previous = row;
    }
    const empty = document.getElementById("no-jobs"); if (empty) empty.hidden = jobs.length > 0;
    text(document.getElementById("status"), "updated " + new Date().toLocaleTimeString("en-GB"));
  } catch (e) { text(document.getElementById("status"), "cannot reach the server"); }
}
async function refreshJob(id) {
  try {
    const response = await fetch("/api/jobs/" + id, {credentials: "same-origin"});
    if (!response.ok) return;
    const job = await response.json();
    const state = document.getElementById("state");
    const was = state.dataset.state;
    setState(state, job.state);
    text(document.getElementById("pairs"), job.pairs === null ? "" : job.pairs.toLocaleString("en"));
    text(document.getElementById("elapsed"), fmtSeconds(job.elapsed_s));
    text(document.getElementById("job-error"), job.error || "");
    for (const stage of job.stages) {
      const row = document.getElementById("stage-" + stage.stage); if (!row) continue;
      setBar(row.querySelector(".bar"), stage.total ? stage.done / stage.total : 0);
      text(row.querySelector(".units"), stage.done + " / " + (stage.total === null ? "?" : stage.total));
      text(row.querySelector(".items"), stage.items_total === null ? stage.items_done.toLocaleString("en")
           : stage.items_done.toLocaleString("en") + " / " + stage.items_total.toLocaleString("en"));
      text(row.querySelector(".rate"), stage.rate === null ? "" : stage.rate.toLocaleString("en") + " /s");
      text(row.querySelector(".eta"), fmtSeconds(stage.eta_s));
    }
    if (was !== job.state && job.state === "done") window.location.reload();  // the results part
    if (["done", "failed", "cancelled"].includes(job.state)) return;
  } catch (e) { /* the server is away: try again */ }
  setTimeout(() => refreshJob(id), 1000);
}
document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "jobs") { refreshJobs(); setInterval(refreshJobs, 1000); }
  if (page === "job") refreshJob(document.body.dataset.job);
});
"""

e = html.escape


def _page(title: str, body: str, data: str = "", status: int = 200) -> HTMLResponse:
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{e(title)}</title>",
        '<link rel="stylesheet" href="/dashboard.css">',
        '<script src="/dashboard.js" defer></script>',
        f"</head><body {data}>",
        '<nav><a href="/">jobs</a><a href="/docs">API docs</a></nav>',
        body,
        "</body></html>",
    ])
    return HTMLResponse(page, status_code=status,
                        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})


def jobs_page(state: str | None) -> HTMLResponse:
    heading = f"Jobs ({e(state)})" if state else "Jobs"
    body = f"""<h1>{heading}</h1>
<p class="note">Newest first; updated every second. <span id="status"></span></p>
<table id="jobs"><thead><tr><th class="num">id</th><th>state</th><th>languages</th><th>model</th>
<th>progress</th><th class="num">pairs</th><th>created (UTC)</th><th>error</th></tr></thead>
<tbody id="jobs-body"></tbody></table>
<p id="no-jobs" class="note">No jobs yet: <code>POST /api/jobs</code>, <code>miner submit</code> or
<code>miner mine</code> add one.</p>"""
    return _page("bitext-miner: jobs", body, 'data-page="jobs"')


def _seconds(value) -> str:
    if value is None:
        return ""
    value = int(round(value))
    if value < 60:
        return f"{value} s"
    if value < 3600:
        return f"{value // 60} min {value % 60} s"
    return f"{value // 3600} h {value % 3600 // 60} min"


def _range(lo: float, hi: float) -> str:
    if math.isinf(lo):
        return f"< {hi:.4g}"
    if math.isinf(hi):
        return f">= {lo:.4g}"
    return f"{lo:.4g} to < {hi:.4g}"


def job_page(service, job_id: int) -> HTMLResponse:
    status = service.status(job_id)
    threshold = status.get("threshold") or {}
    value = threshold.get("value")
    rows = [
        ("source", f"{status['src']} ({status['src_lang']})"),
        ("target", f"{status['tgt']} ({status['tgt_lang']})"),
        ("model", status["model"]),
        ("threshold", (f"{value:g}" if isinstance(value, (int, float)) else "not chosen yet")
         + f" ({threshold_note(threshold) if threshold.get('method') else 'none'})"),
        ("workers", ", ".join(f"{w['name']} ({w['units']} units)" for w in status["workers"]) or "none yet"),
        ("created (UTC)", (status["created_at"] or "")[:19].replace("T", " ")),
    ]
    warning = threshold_warning(job_id, threshold)
    if warning:  # a fallback, or an uncertain cut: what `miner status` warns about
        rows.insert(4, ("threshold warning", warning))
    pairs = "" if status["pairs"] is None else f"{status['pairs']:,}"
    out = [f'<h1>Job {job_id}: {e(status["src_lang"])} → {e(status["tgt_lang"])} '
           f'<span id="state" class="state state-{e(status["state"])}" data-state="{e(status["state"])}">'
           f'{e(status["state"])}</span></h1>',
           f'<p id="job-error" class="error">{e(status.get("error") or "")}</p>',
           "<table>", *(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows),
           f'<tr><th>pairs</th><td id="pairs">{pairs}</td></tr>',
           f'<tr><th>elapsed</th><td id="elapsed">{_seconds(status["elapsed_s"])}</td></tr>',
           "</table>", "<h2>Stages</h2>",
           '<table id="stages"><tr><th>stage</th><th>progress</th><th class="num">units</th>'
           '<th class="num">sentences</th><th class="num">rate</th><th class="num">ETA</th></tr>']
    for stage in status["stages"]:
        share = stage["done"] / stage["total"] if stage["total"] else 0.0
        rate = "" if stage["rate"] is None else f"{stage['rate']:,} /s"
        items = (f"{stage['items_done']:,}" if stage["items_total"] is None
                 else f"{stage['items_done']:,} / {stage['items_total']:,}")
        out.append(f'<tr id="stage-{e(stage["stage"])}"><td>{e(stage["stage"])}</td>'
                   f'<td><span class="bar" title="{100 * share:.0f}%"><span class="w{int(round(100 * share))}">'
                   f'</span></span></td>'
                   f'<td class="num units">{stage["done"]} / {"?" if stage["total"] is None else stage["total"]}</td>'
                   f'<td class="num items">{items}</td>'
                   f'<td class="num rate">{rate}</td>'
                   f'<td class="num eta">{_seconds(stage["eta_s"])}</td></tr>')
    out.append("</table>")
    if status["state"] == "done":
        out.extend(_results(service, job_id))
    return _page(f"bitext-miner: job {job_id}", "\n".join(out), f'data-page="job" data-job="{job_id}"')


def _results(service, job_id: int) -> list[str]:
    base = f"/api/jobs/{job_id}"
    out = ["<h2>Export</h2>", "<p>",
           f'<a href="{base}/export?format=tsv">TSV</a> · <a href="{base}/export?format=tsv&amp;header=true">TSV with '
           f'header</a> · <a href="{base}/export?format=jsonl">JSONL</a> · <a href="{base}/report">full report</a>',
           "</p>", f'<p class="note">Filters as <code>miner export</code>: e.g. <code>{e(base)}/export?format=tsv'
           "&amp;min_score=1.1&amp;dedup=true</code>.</p>"]
    try:
        _, _, summary = service.report(job_id)  # the same rendering as report.png
    except MinerError as exc:
        return out + [f'<p class="note">{e(str(exc))}</p>']
    info = summary["threshold_info"]
    out += ["<h2>Scores</h2>",
            f'<p>{summary["above_threshold"]:,} of {summary["candidates"]:,} candidates at or above the threshold '
            f'{summary["threshold"]:g} ({e(str(info.get("method")))}).</p>',
            f'<img id="histogram" src="{base}/report.png" alt="Histogram of candidate scores with the threshold">',
            "<h2>Sample pairs per score band</h2>"]
    total = max(summary["candidates"], 1)
    for band in summary["bands"]:
        out.append(f'<h3>{e(band["name"])}: scores {e(_range(band["lo"], band["hi"]))} ({band["count"]:,} pairs, '
                   f'{100 * band["count"] / total:.1f}%)</h3>')
        sample = summary["samples"].get(band["name"]) or []
        if not sample:
            out.append('<p class="note">no pairs in this band</p>')
            continue
        out.append('<table class="pairs"><tr><th class="num">score</th><th>source</th><th>target</th></tr>')
        for pair in sample:
            out.append(f'<tr><td class="num">{pair["score"]:.4f}</td><td class="text" dir="auto">{e(pair["src"])}</td>'
                       f'<td class="text" dir="auto">{e(pair["tgt"])}</td></tr>')
        out.append("</table>")
    return out


def _local(target: str | None) -> str:
    """Where to go after the login: a path of this server only."""
    return target if target and target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def login_page(message: str = "", target: str | None = None) -> HTMLResponse:
    body = f"""<h1>Token</h1><p class="error">{e(message)}</p>
<form method="post" action="/login"><input type="hidden" name="next" value="{e(_local(target))}">
<label>MINER_API_TOKEN <input type="password" name="token" autofocus></label>
<button type="submit">open the dashboard</button></form>"""
    return _page("bitext-miner: token", body)


def add_routes(app: FastAPI, service, authorised: Callable[[Request], bool]) -> None:
    """The dashboard's routes; its pages need the token (cookie or header) when one is set."""
    cfg = service.cfg

    @app.get("/", include_in_schema=False)
    def index(request: Request, state: str | None = None):
        if not authorised(request):
            return RedirectResponse("/login", status_code=303)
        return jobs_page(state)

    @app.get("/jobs/{job_id}", include_in_schema=False)
    def job(request: Request, job_id: int):
        if not authorised(request):
            return RedirectResponse(f"/login?next={quote(f'/jobs/{job_id}')}", status_code=303)
        try:
            return job_page(service, job_id)
        except JobNotFound as exc:
            return _page("bitext-miner: no such job", f'<h1>Job {job_id}</h1><p class="error">{e(str(exc))}</p>',
                         status=404)

    @app.get("/dashboard.js", include_in_schema=False)
    def script():
        return Response(SCRIPT, media_type="text/javascript; charset=utf-8")

    @app.get("/dashboard.css", include_in_schema=False)
    def style():
        widths = "".join(f".bar > span.w{i} {{ width: {i}%; }}\n" for i in range(101))
        return Response(CSS + widths, media_type="text/css; charset=utf-8")

    @app.get("/login", include_in_schema=False)
    def login_form(next: str | None = None):
        return login_page(target=next)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        import hmac

        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        target = _local((form.get("next") or ["/"])[0])
        if not cfg.api_token:
            return RedirectResponse(target, status_code=303)
        if not hmac.compare_digest(token.encode(), cfg.api_token.encode()):
            return login_page("wrong token", target)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response
