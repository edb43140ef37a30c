"""``miner serve`` as a real process (issue 15): the JSON API with a real worker, its errors, the
token, the input folders, and the dashboard in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT, miner_env, run_miner, start_workers, stop_workers
from .servers import free_port

pytestmark = pytest.mark.slow

TOKEN = "t0ken-for-tests"
REQUEST = {"src": "sample.de", "tgt": "sample.en", "src_lang": "de", "tgt_lang": "en"}


class Server:
    def __init__(self, folder: Path, **extra: str) -> None:
        self.folder = folder
        self.home = folder / "home"
        self.roots = folder / "inputs"
        self.roots.mkdir()
        for name in ("sample.de", "sample.en"):
            shutil.copy(ROOT / "examples" / name, self.roots / name)
        self.env = {"MINER_API_TOKEN": TOKEN, "MINER_INPUT_ROOTS": str(self.roots), **extra}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "serve.log", "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "miner", "serve", "--port", str(self.port)],
            env=miner_env(self.home, **self.env), stdout=self.log, stderr=subprocess.STDOUT, cwd=str(folder),
            start_new_session=True,
        )
        self.workers = []

    def wait_healthy(self, timeout: float = 60, expect: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"miner serve exited: {self.log_text()}"
            try:
                if call(self, "GET", "/healthz", token=None)[0] == expect:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"/healthz did not answer within {timeout}s: {self.log_text()}")

    def log_text(self) -> str:
        return (self.folder / "serve.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        stop_workers(self.workers)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def call(server: Server, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One HTTP request (urllib); returns (status, headers, body) for errors too."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(server.url + path, data=data, method=method, headers=dict(headers or {}))
    if (data is not None or method == "POST") and not request.has_header("Content-type"):  # urllib's spelling
        request.add_header("Content-Type", "application/json")  # as a client must (miner.faces.api.RequestGuard)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def call_json(server: Server, method: str, path: str, body=None, **kwargs):
    status, _, data = call(server, method, path, body, **kwargs)
    return status, json.loads(data)


def wait_state(server: Server, job_id: int, states=("done", "failed", "cancelled"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    job = {}
    while time.monotonic() < deadline:
        status, job = call_json(server, "GET", f"/api/jobs/{job_id}")
        assert status == 200, job
        if job["state"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.get('state')} after {timeout}s")


def assert_error(status: int, data: bytes, expected: int, fragment: str = "") -> str:
    assert status == expected, (status, data[:500])
    body = json.loads(data)
    assert list(body) == ["error"], body
    message = body["error"]
    assert message and "\n" not in message and "Traceback" not in message, message
    assert fragment.lower() in message.lower(), message
    return message


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    server = Server(folder)
    try:
        server.wait_healthy()  # the schema exists before the worker starts
        server.workers = start_workers(folder, server.home, {}, 1)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mined(server) -> dict:
    """The README example submitted over HTTP and followed until done."""
    status, job = call_json(server, "POST", "/api/jobs", REQUEST)
    assert status == 201, job
    assert job["existing"] is False and job["state"] in ("queued", "running")
    assert job["src"] == str(server.roots / "sample.de")
    if job["state"] != "done":  # not done yet: nothing to export
        code, _, data = call(server, "GET", f"/api/jobs/{job['id']}/export")
        if call_json(server, "GET", f"/api/jobs/{job['id']}")[1]["state"] != "done":
            assert_error(code, data, 409, "not done")
    done = wait_state(server, job["id"])
    assert done["state"] == "done", done
    return done


def test_submit_watch_and_export_like_the_cli(server, mined):
    job_id = mined["id"]
    # The job object is `miner status ID --json`.
    cli = json.loads(run_miner(server.home, "status", str(job_id), "--json").stdout)
    _, api = call_json(server, "GET", f"/api/jobs/{job_id}")
    assert api.keys() == cli.keys()
    assert api["state"] == cli["state"] == "done" and api["pairs"] == cli["pairs"] > 100
    # Listing: newest first, filtered by state.
    _, jobs = call_json(server, "GET", "/api/jobs")
    assert jobs[0]["id"] == max(j["id"] for j in jobs) and job_id in [j["id"] for j in jobs]
    assert job_id in [j["id"] for j in call_json(server, "GET", "/api/jobs?state=done")[1]]
    assert job_id not in [j["id"] for j in call_json(server, "GET", "/api/jobs?state=failed")[1]]
    # The same files and options again: the same job, 200; "force" mines again (then cancelled).
    status, again = call_json(server, "POST", "/api/jobs", REQUEST)
    assert status == 200 and again["id"] == job_id and again["existing"] is True and again["warnings"]
    # Export: the bytes of `miner export` with the same options.
    for query, args, name in [
        ("format=tsv", [], "plain.tsv"),
        ("format=tsv&header=true&max_length_ratio=1.5&min_score=1.1", ["--header", "--max-length-ratio", "1.5",
                                                                       "--min-score", "1.1"], "filtered.tsv"),
        ("format=jsonl&dedup=true", ["--format", "jsonl", "--dedup"], "pairs.jsonl"),
    ]:
        status, headers, data = call(server, "GET", f"/api/jobs/{job_id}/export?{query}")
        assert status == 200, data[:300]
        out = server.folder / name
        result = run_miner(server.home, "export", str(job_id), "-o", out, *args)
        assert result.returncode == 0, result.stderr
        assert data == out.read_bytes() and data, query
    assert call(server, "GET", f"/api/jobs/{job_id}/export?format=tsv&max_length_ratio=1.2")[2].count(b"\n") < \
        mined["pairs"]
    # The report, and its picture.
    status, headers, page = call(server, "GET", f"/api/jobs/{job_id}/report")
    assert status == 200 and page.startswith(b"<!DOCTYPE html>") and b"Pairs per score band" in page
    status, headers, png = call(server, "GET", f"/api/jobs/{job_id}/report.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    # Retry a done job needs force (409); cancel of a done job leaves it done.
    assert_error(*call(server, "POST", f"/api/jobs/{job_id}/retry")[::2], 409, "force")
    status, cancelled = call_json(server, "POST", f"/api/jobs/{job_id}/cancel")
    assert status == 200 and cancelled["state"] == "done" and cancelled["previous_state"] == "done"
    # With force it runs again (finished units are kept) and ends with the same pairs.
    status, retried = call_json(server, "POST", f"/api/jobs/{job_id}/retry", {"force": True})
    assert status == 200 and retried["previous_state"] == "done" and retried["attempt"] == mined["attempt"] + 1
    again = wait_state(server, job_id)
    assert again["state"] == "done" and again["pairs"] == mined["pairs"]
    assert call(server, "GET", f"/api/jobs/{job_id}/export?format=tsv")[2] == (server.folder / "plain.tsv").read_bytes()


def test_bad_requests_are_one_line_json_errors(server, mined):
    post = lambda body=None, raw=None: call(server, "POST", "/api/jobs", body, raw=raw)[::2]  # noqa: E731
    assert_error(*post(raw=b"{not json"), 400, "not valid JSON")
    assert_error(*post([1, 2]), 422, "JSON object")
    assert_error(*post({"src": "sample.de"}), 422, "tgt: Field required")
    assert_error(*post({**REQUEST, "k": 0}), 400, "k: ")  # a bad option, as the README says
    assert_error(*post({**REQUEST, "margin": "cosine"}), 400, "margin: ")
    assert_error(*post({**REQUEST, "k": "four"}), 422, "k: ")  # the wrong shape
    assert_error(*post({**REQUEST, "k": 5000}), 400, "--k 5000 needs more than 5000 sentences")
    assert_error(*post({**REQUEST, "threshold": "high"}), 422, "threshold")
    assert_error(*post({**REQUEST, "no_such_option": 1}), 422, "no_such_option: unknown option")
    assert_error(*post({**REQUEST, "src": "missing.de"}), 400, "missing.de")
    assert_error(*post({**REQUEST, "columns": "id,text", "input_format": "text"}), 400, "columns")
    # curl -d without -H sends a form content type: refused (a page of another site can send that).
    assert_error(*call(server, "POST", "/api/jobs", raw=b'{"src": "sample.de"}',
                       headers={"Content-Type": "application/x-www-form-urlencoded"})[::2], 415, "Content-Type")
    assert_error(*call(server, "GET", "/api/jobs?state=bogus")[::2], 400, "state")
    assert_error(*call(server, "GET", "/api/jobs/987654")[::2], 404, "no job 987654")
    assert_error(*call(server, "GET", "/api/jobs/abc")[::2], 422, "job_id")
    for path in ("/api/jobs/987654/export", "/api/jobs/987654/report"):
        assert_error(*call(server, "GET", path)[::2], 404, "no job")
    assert_error(*call(server, "POST", "/api/jobs/987654/cancel")[::2], 404, "no job")
    assert_error(*call(server, "POST", "/api/jobs/987654/retry")[::2], 404, "no job")
    assert_error(*call(server, "GET", f"/api/jobs/{mined['id']}/export?format=moses")[::2], 400, "moses")
    assert_error(*call(server, "GET", f"/api/jobs/{mined['id']}/export?format=xml")[::2], 400, "format")
    assert_error(*call(server, "GET", "/api/nothing-here")[::2], 404)
    status, _, page = call(server, "GET", "/jobs/987654", headers={"Cookie": f"miner_token={TOKEN}"}, token=None)
    assert status == 404 and b"no job 987654" in page


def test_token(server):
    assert_error(*call(server, "GET", "/api/jobs", token=None)[::2], 401, "Bearer")
    status, headers, data = call(server, "GET", "/api/jobs", token="wrong")
    assert_error(status, data, 401)
    assert {k.lower(): v for k, v in headers.items()}.get("www-authenticate") == "Bearer"
    assert_error(*call(server, "POST", "/api/jobs", REQUEST, token=None)[::2], 401)
    # The dashboard's cookie reads, and only reads.
    status, _, _ = call(server, "GET", "/api/jobs", token=None, headers={"Cookie": f"miner_token={TOKEN}"})
    assert status == 200
    status, _, _ = call(server, "POST", "/api/jobs", REQUEST, token=None, headers={"Cookie": f"miner_token={TOKEN}"})
    assert status == 401
    status, _, health = call(server, "GET", "/healthz", token=None)
    assert status == 200 and json.loads(health) == {"database": "ok", "broker": "ok"}
    status, _, schema = call(server, "GET", "/openapi.json", token=None)  # what /docs shows
    paths = json.loads(schema)["paths"]
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/retry",
                 "/api/jobs/{job_id}/export", "/api/jobs/{job_id}/report", "/healthz"):
        assert path in paths, path
    assert call(server, "GET", "/docs", token=None)[0] == 200
    status, headers, page = call(server, "GET", "/", token=None)  # urllib follows the redirect to the form
    assert status == 200 and b'action="/login"' in page
    # The form: a wrong token is refused, the right one sets the cookie and goes back to the page asked for.
    import http.client

    for token, expected in (("wrong", 200), (TOKEN, 303)):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("POST", "/login", body=f"token={token}&next=/jobs/1",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == expected, body[:300]
        if expected == 303:
            assert response.getheader("Location") == "/jobs/1"
            cookie = response.getheader("Set-Cookie")
            assert cookie.startswith(f"miner_token={TOKEN}") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        else:
            assert b"wrong token" in body


def test_inputs_outside_the_roots_are_refused(server, tmp_path):
    outside = tmp_path / "secret.de"
    outside.write_text("Geheim.\n", encoding="utf-8")
    link = server.roots / "link.de"
    link.symlink_to(outside)
    for src in ("/etc/passwd", "../../../../etc/passwd", str(outside), "link.de", "../home/miner.db"):
        assert_error(*call(server, "POST", "/api/jobs", {**REQUEST, "src": src})[::2], 403, "outside")
    assert_error(*call(server, "POST", "/api/jobs", {**REQUEST, "tgt": "/etc/hostname"})[::2], 403, "outside")
    assert_error(*call(server, "POST", "/api/jobs", {**REQUEST, "src": "http://example.com/a.de"})[::2], 403,
                 "MINER_INPUT_URLS")
    # A model directory is read too, and a model's own code runs only where the server allows it.
    assert_error(*call(server, "POST", "/api/jobs", {**REQUEST, "model": str(tmp_path)})[::2], 403, "outside")
    assert_error(*call(server, "POST", "/api/jobs", {**REQUEST, "trust_remote_code": True})[::2], 403,
                 "MINER_TRUST_REMOTE_CODE")


def test_object_store_inputs_under_the_url_prefixes(tmp_path, s3_server):
    """Inputs by URL over HTTP: read from the prefixes MINER_INPUT_URLS names, refused elsewhere."""
    bucket = s3_server.create_bucket("api-corpora")
    src = s3_server.upload(ROOT / "examples" / "sample.de", bucket, "inputs/sample.de")
    tgt = s3_server.upload(ROOT / "examples" / "sample.en", bucket, "inputs/sample.en")
    s3_server.upload(ROOT / "examples" / "sample.de", bucket, "private/sample.de")
    server = Server(tmp_path, MINER_INPUT_URLS=f"s3://{bucket}/inputs/", **s3_server.env)
    try:
        server.wait_healthy()
        for url, why in ((f"s3://{bucket}/private/sample.de", "outside the URL prefixes"),
                         (f"s3://{bucket}/inputs/../private/sample.de", ".. segments"),
                         (f"s3://{bucket}/inputs-other/x.de", "outside the URL prefixes"),
                         ("s3://another/inputs/sample.de", "outside the URL prefixes")):
            assert_error(*call(server, "POST", "/api/jobs", {**REQUEST, "src": url})[::2], 403, why)
        server.workers = start_workers(tmp_path, server.home, server.env, 1)
        status, job = call_json(server, "POST", "/api/jobs", {**REQUEST, "src": src, "tgt": tgt})
        assert status == 201 and job["src"] == src and job["tgt"] == tgt, job
        done = wait_state(server, job["id"])
        assert done["state"] == "done" and done["pairs"] > 200, done
        data = call(server, "GET", f"/api/jobs/{job['id']}/export")[2]
        out = tmp_path / "url.tsv"
        result = run_miner(server.home, "export", str(job["id"]), "-o", out, **server.env)
        assert result.returncode == 0, result.stderr
        assert data == out.read_bytes() and data.count(b"\n") == done["pairs"]
    finally:
        server.stop()


def test_on_a_cluster(tmp_path, cluster_env):
    """The same API over PostgreSQL and a Redis broker, with a worker of its own."""
    upgrade = run_miner(tmp_path / "home", "db", "upgrade", **cluster_env)
    assert upgrade.returncode == 0, upgrade.stderr
    server = Server(tmp_path, **cluster_env)
    try:
        server.wait_healthy()
        server.workers = start_workers(tmp_path, server.home, server.env, 1)
        status, job = call_json(server, "POST", "/api/jobs", {**REQUEST, "shard_size": 100})
        assert status == 201, job
        done = wait_state(server, job["id"])
        assert done["state"] == "done" and done["stages"][1]["total"] == 7, done  # 3 + 4 embed shards
        data = call(server, "GET", f"/api/jobs/{job['id']}/export?format=jsonl")[2]
        out = tmp_path / "cluster.jsonl"
        result = run_miner(server.home, "export", str(job["id"]), "-o", out, **cluster_env)
        assert result.returncode == 0, result.stderr
        assert data == out.read_bytes() and data.count(b"\n") == done["pairs"]
    finally:
        server.stop()


def test_broker_down(tmp_path):
    """/healthz says which part is unreachable (503); a job whose tasks cannot be sent is marked failed
    and the answer says how to send it again."""
    server = Server(tmp_path, MINER_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    try:
        server.wait_healthy(expect=503)
        status, health = call_json(server, "GET", "/healthz", token=None)
        assert status == 503 and health["database"] == "ok"
        assert health["error"] == health["broker"] and "cannot reach the broker" in health["broker"]
        message = assert_error(*call(server, "POST", "/api/jobs", REQUEST)[::2], 503, "could not reach the broker")
        assert "miner retry" in message
        _, jobs = call_json(server, "GET", "/api/jobs?state=failed")
        assert len(jobs) == 1 and "could not reach the broker" in jobs[0]["error"]
    finally:
        server.stop()


def test_serve_refuses_a_public_host_without_token(tmp_path):
    result = run_miner(tmp_path / "home", "serve", "--host", "0.0.0.0", "--port", str(free_port()), timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: --host 0.0.0.0") and result.stderr.count("\n") == 1, result.stderr
    shown = run_miner(tmp_path / "home", "config", MINER_API_TOKEN="hunter2", MINER_INPUT_ROOTS="/data")
    assert "api_token: ***" in shown.stdout and "hunter2" not in shown.stdout
    assert "input_roots: /data" in shown.stdout


# --------------------------------------------------------------------------- the dashboard

HOSTILE = "<script>window.__xss = 1</script>"
HOSTILE_IMG = '"><img src=x onerror="window.__xss = 2">'


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


def hostile_corpus(folder: Path) -> tuple[Path, Path]:
    """60 German-English pairs of the example, every third with markup in both sides."""
    de = (ROOT / "examples" / "sample.de").read_text(encoding="utf-8").splitlines()
    en = {line.split("\t")[0]: line.split("\t")[1]
          for line in (ROOT / "examples" / "gold.tsv").read_text(encoding="utf-8").splitlines()}
    pairs = [(d, en[d]) for d in de if d in en][:60]
    pairs = [(f"{d} {HOSTILE if i % 2 else HOSTILE_IMG}", f"{e} {HOSTILE if i % 2 else HOSTILE_IMG}")
             if i % 3 == 0 else (d, e) for i, (d, e) in enumerate(pairs)]
    src, tgt = folder / "hostile.de", folder / "hostile.en"
    src.write_text("\n".join(d for d, _ in pairs) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(e for _, e in reversed(pairs)) + "\n", encoding="utf-8")
    return src, tgt


def test_dashboard_follows_a_job_live_in_chromium(server, mined, tmp_path):
    from .cdp import Browser

    src, tgt = hostile_corpus(server.roots)
    browser = Browser(chromium(), str(tmp_path / "profile"))
    try:
        browser.set_cookie("miner_token", TOKEN, server.url)
        browser.open(server.url + "/")
        browser.wait_for(f"document.getElementById('job-{mined['id']}') !== null", 20)
        browser.evaluate("window.__opened = 1")  # gone if the page reloads
        status, job = call_json(server, "POST", "/api/jobs",
                                {"src": src.name, "tgt": tgt.name, "src_lang": "de", "tgt_lang": "en", "threshold": 1.0})
        assert status == 201, job
        row = f"document.querySelector('#job-{job['id']} .state')"
        browser.wait_for(f"{row} !== null", 20)
        seen: list = []
        browser.wait_for(f"{row}.dataset.state === 'done' && {row}.dataset.state", 120, seen=seen)
        assert browser.evaluate("window.__opened") == 1, "the jobs page reloaded"
        assert browser.evaluate(f"document.getElementById('jobs-body').firstElementChild.id") == f"job-{job['id']}"
        assert browser.evaluate(f"document.querySelector('#job-{job['id']} .bar > span').style.width") == "100%"

        browser.navigate(f"{server.url}/jobs/{job['id']}")
        browser.wait_for("(() => { const img = document.getElementById('histogram');"
                         " return img !== null && img.complete && img.naturalWidth > 600; })()", 60)
        cells = browser.evaluate("[...document.querySelectorAll('table.pairs td.text')].map(td => td.textContent)")
        assert any(HOSTILE in cell for cell in cells) and any(HOSTILE_IMG in cell for cell in cells), cells[:6]
        assert browser.evaluate("document.scripts.length") == 1  # dashboard.js only: no corpus text ran
        assert browser.evaluate("document.querySelectorAll('img').length") == 1  # the histogram only
        assert browser.evaluate("window.__xss === undefined")
        stages = browser.evaluate("[...document.querySelectorAll('#stages tr[id]')].map(tr => tr.id)")
        assert stages == ["stage-ingest", "stage-embed", "stage-index", "stage-knn", "stage-score", "stage-finish"]
        full = browser.evaluate("[...document.querySelectorAll('#stages .bar')]"
                                ".map(bar => bar.firstElementChild.offsetWidth === bar.offsetWidth && bar.offsetWidth > 50)")
        assert full == [True] * 6, full
        links = browser.evaluate("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
        assert f"/api/jobs/{job['id']}/export?format=tsv" in links
        assert browser.problems() == []
    finally:
        browser.close()


def test_an_internal_error_answers_a_request_id_not_its_message(tmp_path, monkeypatch, capfd):
    """500 responses returned the exception's type and message (paths, SQL, configuration) to
    whoever asked; now a generic line with a request id, and the details in the server's log."""
    from fastapi.testclient import TestClient

    from miner.faces.api import Service, create_app
    from miner.runtime.config import Config

    monkeypatch.setenv("MINER_HOME", str(tmp_path / "home"))
    cfg = Config.from_env()

    def broken(self, state=None, limit=50):
        raise RuntimeError("secret at /etc/miner/credentials")

    monkeypatch.setattr(Service, "jobs", broken)
    client = TestClient(create_app(cfg), base_url="http://localhost", raise_server_exceptions=False)
    response = client.get("/api/jobs")
    assert response.status_code == 500
    request_id = response.headers["X-Request-ID"]
    assert response.json() == {"error": f"internal error (request {request_id}); the server's log has the details"}
    assert "secret" not in response.text and "RuntimeError" not in response.text
    log = capfd.readouterr().err
    assert f"request {request_id}: GET /api/jobs: internal error" in log and "secret at /etc/miner/credentials" in log


def test_cross_site_requests_are_refused_on_a_server_without_token(tmp_path):
    """Loopback, no token (the default): every request was allowed and the Host never checked, and
    `JsonBodies` read any Content-Type as JSON, so a page of another site could POST `text/plain` to
    /api/jobs (201) or cancel a job, and DNS rebinding let it read exports. A real uvicorn server."""
    server = Server(tmp_path, MINER_API_TOKEN="")
    try:
        server.wait_healthy()
        body = json.dumps(REQUEST).encode()
        # A page of evil.example posting a "simple" request (no preflight): text/plain.
        assert_error(*call(server, "POST", "/api/jobs", raw=body, token=None,
                           headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})[::2],
                     403, "cross-origin request refused")
        assert_error(*call(server, "POST", "/api/jobs", raw=body, token=None,
                           headers={"Content-Type": "text/plain"})[::2], 415, "application/json")
        assert_error(*call(server, "POST", "/api/jobs", raw=body, token=None,
                           headers={"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"})[::2],
                     403, "cross-site request refused")
        # DNS rebinding: the page's own name in the Host header.
        assert_error(*call(server, "GET", "/api/jobs", token=None, headers={"Host": "evil.example"})[::2], 400,
                     "Host 'evil.example' is not served here")
        # A cancel without a JSON content type (a form's, or none).
        status, _, data = call(server, "POST", "/api/jobs/1/cancel", token=None, headers={"Content-Type": "text/plain"})
        assert_error(status, data, 415)
        assert json.loads(call(server, "GET", "/api/jobs", token=None)[2]) == []  # nothing was created
        # What still works: the dashboard, and curl -H 'Content-Type: application/json'.
        status, _, page = call(server, "GET", "/", token=None)
        assert status == 200 and b"<html" in page.lower()
        status, created = call_json(server, "POST", "/api/jobs", REQUEST, token=None)
        assert status == 201, created
        status, cancelled = call_json(server, "POST", f"/api/jobs/{created['id']}/cancel", token=None)
        assert status == 200, cancelled
        assert call(server, "GET", "/api/jobs", token=None, headers={"Host": "localhost"})[0] == 200
    finally:
        server.stop()
