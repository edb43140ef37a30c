"""--trust-remote-code is opt-in: a local model directory never runs code of its own unless asked."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from miner.faces.cli import main
from miner.runtime.config import Config
from miner.embedding.encoders import encode, load_kwargs, load_model, resolve_model, trusting
from miner.runtime.errors import ModelError
from miner.pipeline.jobs import get_job

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

CUSTOM_MODULE = '''
from sentence_transformers.sentence_transformer.modules import StaticEmbedding


class MarkedStatic(StaticEmbedding):
    """A custom module class: importing and building it is the model running its own code."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from tiny_encoder import build_tiny_encoder
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return build_tiny_encoder(tmp_path_factory.mktemp("models") / "tiny", dim=16, check=False)


@pytest.fixture
def custom(tiny, tmp_path) -> Path:
    """The tiny model, with its module replaced by a class that lives in the model directory."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules[0]["type"] = "custom_static.MarkedStatic"
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "custom_static.py").write_text(CUSTOM_MODULE)
    return folder


def test_local_directory_loads_without_trusting_its_code(tiny):
    spec = resolve_model(str(tiny))
    assert load_kwargs(spec)["trust_remote_code"] is False
    assert load_kwargs(spec, trust_remote_code=True)["trust_remote_code"] is True
    model = load_model(spec)  # a plain sentence-transformers directory needs no remote code
    vectors = encode(model, ["Hallo Welt", "Hello world"])
    assert vectors.shape == (2, 16)


def test_custom_code_needs_the_flag(custom):
    spec = resolve_model(str(custom))
    with pytest.raises(ModelError, match="--trust-remote-code") as caught:
        load_model(spec)
    assert "custom_static.MarkedStatic" in str(caught.value)
    with trusting(False), pytest.raises(ModelError, match="--trust-remote-code"):
        load_model(spec)


def test_submit_refuses_custom_code_without_the_flag(home, custom):
    runner = CliRunner()
    args = ["submit", str(EXAMPLES / "sample.de"), str(EXAMPLES / "sample.en"), "--src-lang", "de",
            "--tgt-lang", "en", "--model", str(custom)]
    result = runner.invoke(main, args)
    assert result.exit_code == 4, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--trust-remote-code" in errors[0], result.output
    listed = runner.invoke(main, ["jobs", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output) == []  # no job was created

    result = runner.invoke(main, [*args, "--trust-remote-code"])
    assert result.exit_code == 0, result.output
    job_id = int(result.output.strip().splitlines()[-1])
    assert get_job(Config.from_env(), job_id).options["trust_remote_code"] is True


def test_submit_records_no_trust_by_default(home, tiny):
    result = CliRunner().invoke(main, ["submit", str(EXAMPLES / "sample.de"), str(EXAMPLES / "sample.en"),
                                       "--src-lang", "de", "--tgt-lang", "en", "--model", str(tiny)])
    assert result.exit_code == 0, result.output
    job_id = int(result.output.strip().splitlines()[-1])
    assert get_job(Config.from_env(), job_id).options["trust_remote_code"] is False


def test_help_mentions_the_flag():
    for command in ("mine", "submit"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert "--trust-remote-code" in result.output


def test_a_worker_never_reuses_a_trusted_load_for_a_job_without_trust(custom, tmp_path):
    """The worker's model cache is keyed by the trust in effect: a model loaded for a job that passed
    --trust-remote-code is not handed to a job that did not; that job gets the clear error."""
    from miner.pipeline import steps

    cfg = Config.from_env()
    with trusting(True):
        trusted = steps.model_for(cfg, str(custom))
        assert steps.model_for(cfg, str(custom)) is trusted  # the same job's next task reuses it
    with trusting(False), pytest.raises(ModelError, match="--trust-remote-code"):
        steps.model_for(cfg, str(custom))


def test_the_servers_setting_is_a_ceiling_for_http_jobs(home, monkeypatch):
    """With MINER_TRUST_REMOTE_CODE=1 on a server, every HTTP job was trusted, `"trust_remote_code":
    false` included (`opts.get(...) or cfg...`). Over HTTP a job is trusted only when it asks and the
    server allows; on the command line the variable stays the default of a job that does not say."""
    from fastapi.testclient import TestClient

    from miner.faces.api import create_app

    monkeypatch.setenv("MINER_TRUST_REMOTE_CODE", "1")
    monkeypatch.setenv("MINER_INPUT_ROOTS", str(EXAMPLES))
    from .quality_helpers import config

    cfg = config()  # folders and schema, as `miner serve` makes them
    client = TestClient(create_app(cfg), base_url="http://localhost")
    body = {"src": "sample.de", "tgt": "sample.en", "src_lang": "de", "tgt_lang": "en", "force": True}
    trusted = {}
    for name, extra in (("unsaid", {}), ("false", {"trust_remote_code": False}), ("true", {"trust_remote_code": True})):
        response = client.post("/api/jobs", json={**body, **extra})
        assert response.status_code == 201, response.text
        trusted[name] = get_job(cfg, response.json()["id"]).options["trust_remote_code"]
    assert trusted == {"unsaid": False, "false": False, "true": True}
    # The CLI: the variable is the default; an explicit answer is not needed.
    result = CliRunner().invoke(main, ["submit", str(EXAMPLES / "sample.de"), str(EXAMPLES / "sample.en"),
                                       "--src-lang", "de", "--tgt-lang", "en", "--force"])
    assert result.exit_code == 0, result.output
    assert get_job(cfg, int(result.output.strip().splitlines()[-1])).options["trust_remote_code"] is True


def test_the_api_offers_only_the_models_it_lists(home, monkeypatch):
    """Hugging Face ids from HTTP were not confined: any job could make the workers fetch and run
    any hub model. MINER_API_MODELS lists what the server offers."""
    from fastapi.testclient import TestClient

    from miner.faces.api import create_app

    from .quality_helpers import config

    monkeypatch.setenv("MINER_INPUT_ROOTS", str(EXAMPLES))
    monkeypatch.setenv("MINER_API_MODELS", "muse, minilm")
    client = TestClient(create_app(config()), base_url="http://localhost")
    body = {"src": "sample.de", "tgt": "sample.en", "src_lang": "de", "tgt_lang": "en"}
    refused = client.post("/api/jobs", json={**body, "model": "sentence-transformers/LaBSE"})
    assert refused.status_code == 403
    assert refused.json() == {"error": "model 'sentence-transformers/LaBSE' is not one this server offers "
                                       "(MINER_API_MODELS: muse, minilm)"}
    assert client.post("/api/jobs", json={**body, "model": "muse"}).status_code == 201
