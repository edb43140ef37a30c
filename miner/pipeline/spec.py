"""The job spec: every option of a job, once.

:class:`JobOptions` declares each option with its type, default, choices, help text and whether it
changes results. Everything else is derived from it:

* the click options of ``miner mine`` and ``miner submit`` (:func:`miner.faces.cli_options.job_options`);
* the body of ``POST /api/jobs`` (:data:`miner.faces.api.JobRequest`);
* what makes two submissions the same job (:data:`REQUEST_OPTIONS`, :data:`FORMAT_OPTIONS`);
* what a job row stores (:meth:`JobOptions.stored`) and what the workers read back, typed
  (:meth:`JobOptions.load`, tolerant of rows written by earlier versions).

``tests/test_spec.py`` checks that the CLI and the HTTP body agree with it. Adding an option is one
field here plus its use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from miner.runtime import defaults
from miner.runtime.errors import UsageError

MARGINS = ("ratio", "distance", "absolute")
RETRIEVALS = ("max", "intersect", "fwd", "bwd")
DECODE_ERRORS = ("skip", "replace", "fail")
INPUT_FORMATS = ("auto", "text", "tsv", "jsonl")
BAD_ROW_POLICIES = ("skip", "fail")
INDEXES = ("auto", "flat", "ivf", "ivfpq")
STORAGES = ("auto", "float32", "float16")
#: How a job's cut is chosen (``JobOptions.threshold_method``); a finished auto job whose scores do
#: not allow an estimate records "fallback" in ``jobs.threshold_info``.
THRESHOLD_METHODS = ("auto", "fixed", "calibrated")

THRESHOLD_HELP = (
    "Keep pairs scoring >= this (equal scores are kept; LASER keeps > only): a number, or auto (each job estimates its own cut from its score "
    "distribution, no gold needed). Default: the threshold `miner calibrate` stored for the model and "
    "margin, else auto. A number, a calibrated threshold and `export --min-score` take precedence over auto; "
    "auto falls back to the model's fixed default (muse/ratio 1.05) when the scores allow no estimate, "
    "with a warning."
)

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, choices: tuple[str, ...] | None = None,
           minimum: int | None = None, keyed: str | None = None, cli: bool = True, cli_default: Any = _MISSING,
           metavar: str | None = None, show_default: bool = True, kind: str | None = None,
           label: str | None = None) -> Any:
    """A field of the spec.

    Args:
        default: the value of a job that does not give one (none: required).
        help: the CLI's help text (also the HTTP body's description).
        choices: the values allowed.
        minimum: the smallest value allowed (integers).
        keyed: ``"always"``: it changes the stored candidates, so it enters the request key (two
            submissions that differ in it are different jobs); ``"format"``: only for inputs read
            as TSV/JSONL; None: it does not change the candidates (the cut, the shard size).
        cli: whether ``mine``/``submit`` and the HTTP body take it (False: resolved when the job
            is created, e.g. ``model_key``).
        cli_default: the CLI's and HTTP body's default where the field has none.
        metavar, show_default: for the CLI's help.
        kind: ``"threshold"`` (a number or ``auto``) or ``"flag"`` (an on/off switch, None when
            not given), else the field's type.
        label: its name in error messages (default: the field's name in words).
    """
    metadata = {"help": help, "choices": choices, "minimum": minimum, "keyed": keyed, "cli": cli,
                "cli_default": default if cli_default is _MISSING else cli_default, "metavar": metavar,
                "show_default": show_default, "kind": kind, "label": label}
    if default is _MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """The options of one job: what ``mine``/``submit`` and ``POST /api/jobs`` take, plus what is
    resolved when the job is created (the model's content key, how the cut is chosen, the fixed
    default that auto falls back to). ``model_key`` and the reader settings enter artifact keys."""

    src_lang: str = option(help="Language code of SRC (ISO 639-1 or 639-3; a label).", keyed="always")
    tgt_lang: str = option(help="Language code of TGT.", keyed="always")
    model: str = option(help="muse, minilm, a local sentence-transformers directory or a Hugging Face id.",
                        cli_default=defaults.MODEL)
    # The model's content key (miner.embedding.encoders.resolve_model): two names of one model are one job.
    model_key: str = option(keyed="always", cli=False)
    k: int = option(defaults.K, "Neighbours per sentence for the margin.", minimum=1, keyed="always")
    margin: str = option(defaults.MARGIN, "Margin function (Artetxe & Schwenk 2019).", choices=MARGINS,
                         keyed="always")
    retrieval: str = option(defaults.RETRIEVAL, "Which candidates to keep.", choices=RETRIEVALS, keyed="always")
    threshold: float | None = option(None, THRESHOLD_HELP, kind="threshold", metavar="NUMBER|auto",
                                     show_default=False)
    # How the cut is chosen: "auto" (threshold None: the finish step estimates it from the job's
    # scores), "fixed" (--threshold N) or "calibrated" (stored by `miner calibrate`). None (library
    # callers, jobs mined before --threshold auto): a number is fixed, None keeps every candidate.
    threshold_method: str | None = option(None, choices=THRESHOLD_METHODS, cli=False)
    # The model's fixed default, resolved when the job is created: what "auto" falls back to.
    fallback_threshold: float | None = option(None, cli=False)
    shard_size: int = option(defaults.SHARD_SIZE, "Sentences per shard (unit of parallel work).", minimum=1)
    max_line_length: int = option(defaults.MAX_LINE_LENGTH, "Longer lines (characters) are skipped and counted.",
                                  minimum=1, keyed="always")
    on_decode_error: str = option("skip", "Lines that are not valid UTF-8: skip (counted), replace bytes, or fail.",
                                  choices=DECODE_ERRORS, keyed="always")
    input_format: str = option(
        "auto", "How SRC and TGT are read: text (one sentence per line; ids are 1-based line numbers), "
                "tsv (ID<TAB>TEXT as BUCC, or --columns; more columns are kept as metadata), jsonl "
                "(objects with text, optional id, other fields kept as metadata); auto: jsonl for "
                ".jsonl/.ndjson names, else text.", choices=INPUT_FORMATS)
    columns: str | None = option(
        None, "TSV column names, comma-separated, e.g. id,text,url (default id,text); 'text' is "
              "required, 'id' optional (else line numbers), the others are kept as metadata.",
        metavar="NAMES", keyed="format", show_default=False)
    on_bad_row: str = option(
        "skip", "TSV/JSONL rows that cannot be read (too few columns, invalid JSON, no text, an id "
                "used twice): skip (counted) or fail with the line number.", choices=BAD_ROW_POLICIES, keyed="format",
        label="bad-row policy")
    index: str = option("auto", "Search index per side: auto = exact (flat) up to 100,000 sentences, IVF up to 2M, "
                                "then IVF-PQ.", choices=INDEXES, keyed="always")
    nlist: int | None = option(None, "IVF lists (default about 4*sqrt(sentences), a power of two).", minimum=1,
                               keyed="always", show_default=False)
    nprobe: int | None = option(None, "IVF lists searched per query (default 16; nlist/256 above 4096 lists, at "
                                      "most 64).", minimum=1, keyed="always", show_default=False)
    storage: str = option("auto", "Embeddings on disk: auto = float16 for sides searched by an IVF index, else "
                                  "float32.", choices=STORAGES, keyed="always")
    # Let the model run its own code when the workers load it; no effect on results.
    trust_remote_code: bool = option(
        False, "Let a local or Hugging Face model run code of its own (custom module classes, "
               "auto_map) when the workers load it. Off by default (MINER_TRUST_REMOTE_CODE=1 "
               "turns it on); muse and minilm need no code of their own.", kind="flag", cli_default=None)

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value, minimum, choices = getattr(self, spec.name), spec.metadata["minimum"], spec.metadata["choices"]
            label = spec.metadata["label"] or spec.name.replace("_", " ")
            if minimum is not None and value is not None and value < minimum:
                raise UsageError(f"{label} must be at least {minimum}, got {value}")
            if choices is not None and value is not None and value not in choices:
                raise UsageError(f"unknown {label} {value!r}; use one of {', '.join(choices)}")
        from miner.io.records import parse_columns

        if self.columns is not None:
            if self.input_format not in ("tsv", "auto"):
                raise UsageError(f"--columns names TSV columns; it does not apply to --input-format {self.input_format}")
            object.__setattr__(self, "columns", ",".join(parse_columns(self.columns)))  # frozen
        if self.threshold_method == "auto" and self.threshold is not None:
            raise UsageError(f"an automatic threshold takes no value, got {self.threshold}")
        if self.threshold_method in ("fixed", "calibrated") and self.threshold is None:
            raise UsageError(f"a {self.threshold_method} threshold needs a value")
        from miner.core.indexes import choose_index

        choose_index(1000, 512, self.index, self.nlist, self.nprobe)  # raises UsageError when invalid

    def stored(self) -> dict:
        """What the job row's ``options`` holds (the languages and model have columns of their own)."""
        data = dataclasses.asdict(self)
        for key in ("src_lang", "tgt_lang", "model"):
            data.pop(key)
        return data

    @classmethod
    def load(cls, stored: dict | None, src_lang: str = "", tgt_lang: str = "", model: str = "") -> JobOptions:
        """The typed options of a job row (``job.options`` and its columns), as the workers read them.
        Tolerant of rows written by earlier versions: a missing option takes its default, an unknown
        one is ignored, and nothing is validated again (the row was valid when it was created)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in (stored or {}).items() if k in names}
        values.update(src_lang=src_lang, tgt_lang=tgt_lang, model=model)
        for name, spec in names.items():
            if name not in values:
                values[name] = spec.default if spec.default is not _MISSING else ""
        loaded = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(loaded, name, value)
        return loaded


def job_spec(job) -> JobOptions:
    """A job row's options, typed (:meth:`JobOptions.load`); read once per loaded row (the steps ask
    for them many times per unit)."""
    cached = getattr(job, "_miner_spec", None)
    if cached is not None and cached[0] is job.options:
        return cached[1]
    options = JobOptions.load(job.options, job.src_lang, job.tgt_lang, job.model)
    job._miner_spec = (job.options, options)
    return options


def request_fields(threshold_type) -> dict:
    """The fields of the HTTP body (``POST /api/jobs``) as pydantic field definitions: the inputs,
    then every option the CLI takes, with its type, default, choices, lower bound and help, then
    ``force``. ``threshold_type``: the type of a threshold (a finite number or "auto")."""
    import typing

    from pydantic import Field

    hints = typing.get_type_hints(JobOptions)
    out: dict = {
        "src": (str, Field(description="Source corpus: a path under MINER_INPUT_ROOTS (relative: to the first "
                                       "root), or an object-store URL under MINER_INPUT_URLS.")),
        "tgt": (str, Field(description="Target corpus, as src.")),
    }
    for spec in fields():
        meta = spec.metadata
        default = meta["cli_default"]
        required = default is _MISSING
        if meta["kind"] == "threshold":
            kind = threshold_type | None
        elif meta["kind"] == "flag":
            kind = bool | None
        elif meta["choices"] is not None:
            kind = typing.Literal[tuple(meta["choices"])]
        else:
            kind = hints[spec.name]
        constraints = {"ge": meta["minimum"]} if meta["minimum"] is not None else {}
        if required and kind is str:
            constraints["min_length"] = 1
        out[spec.name] = (kind, Field(... if required else default, description=meta["help"] or None, **constraints))
    out["force"] = (bool, Field(False, description="Mine again even when a job with the same files (by content) "
                                                   "and options exists."))
    return out


def fields(cli_only: bool = True) -> list[dataclasses.Field]:
    """The spec's fields (those ``mine``/``submit`` and the HTTP body take, unless ``cli_only`` is False)."""
    return [f for f in dataclasses.fields(JobOptions) if f.metadata["cli"] or not cli_only]


#: Options that change the stored candidates (threshold and shard size do not).
REQUEST_OPTIONS = tuple(f.name for f in dataclasses.fields(JobOptions) if f.metadata["keyed"] == "always")
#: Reader options that enter the key only when they read a file differently from plain text, so a
#: plain-text job keeps the key it had before they existed.
FORMAT_OPTIONS = tuple(f.name for f in dataclasses.fields(JobOptions) if f.metadata["keyed"] == "format")
