"""Labelling outside activelab: the file-exchange oracle, export of the outstanding batch of a run, and import
of the answers people gave (the ``export`` and ``import`` verbs, :mod:`activelab.labelling.commands`).

The ``exchange`` oracle answers nothing: when the loop asks it about a batch it quits with the status
``"awaiting labels"``, so the run pauses in that state with the batch outstanding. Then::

    activelab export RUN --format label-studio|csv|jsonl     # the outstanding batch, with suggestions and scores
    activelab import RUN FILE                                # the answers, stored durably
    activelab resume RUN                                     # trains on them and asks for the next batch

Formats (``--format``; on import guessed from the file's extension):

- ``label-studio``: Label Studio tasks (``.json``) plus the matching labelling config (``.xml``); import reads
  Label Studio's JSON export (the item id travels in each task's ``data.item_id``). A skipped (cancelled)
  annotation counts as a skip.
- ``csv``: columns ``item_id``, the fields of ``task.describe``, ``suggestion``, ``score``, ``label`` (empty)
  and ``skip``; fill in ``label`` (as you would type it at the terminal) or put ``yes`` under ``skip``.
- ``jsonl``: one object per item with the same keys; set ``"label"`` to the label value or ``"skip": true``.

Import rules: the whole file is parsed first and a file that cannot be parsed stores nothing. Each answer is then
checked on its own: an unknown item, an item not in the current batch, or a label the task refuses
(``check_label``) is reported, one line naming the item, and not stored; every valid answer is stored through
the pool, durably, one transaction each. An item already labelled exactly so is left alone, so importing the same
file twice changes nothing; a different label for an item answered earlier in the same round replaces it (a
corrected export), while labels of earlier rounds (already trained on) are never changed. A skip counts only for
an item of the current batch that the file does not also label (one Label Studio project can hold every round's
tasks: an item skipped in one round and labelled in a later one is simply labelled).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from activelab.errors import UserError
from activelab.loop import Runner
from activelab.protocol import Answer, Context, Env, ItemId, Label, Quit, RunStatus, Skip, Task

from . import label_schema, label_studio

FORMATS = ("label-studio", "csv", "jsonl")
SUFFIX = {"label-studio": ".json", "csv": ".csv", "jsonl": ".jsonl"}
BY_SUFFIX = {".json": "label-studio", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MEDIA = ("image", "audio")
YES = {"yes", "y", "true", "1", "skip"}


class ExchangeOracle:
    """Pauses the run at every batch until its labels are imported (see the module docstring)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def label(self, task: Task, items: Sequence[ItemId], ctx: Context) -> Iterator[Answer]:
        if items:
            yield Quit("the batch is labelled outside activelab", status=RunStatus.AWAITING_LABELS)


# ------------------------------------------------------------------------------------------------- export
def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, media_url: str | None = None,
           media_root: str | None = None) -> list[Path]:
    """Write the outstanding items of the current batch; returns the files written.

    ``media_url`` turns image/audio paths into URLs: the prefix followed by the path relative to ``media_root``
    (e.g. ``/data/local-files/?d=`` for Label Studio's local file serving)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    runner = Runner(run_dir, progress=False)
    try:
        round, batch, outstanding = _current(runner)
        if not outstanding:
            raise UserError(f"{run_dir}: nothing to label: every item of round {round}'s batch is answered "
                            f"(status: {runner.store.get_state('status', RunStatus.CREATED)})")
        scores = dict(zip(batch, runner.store.batch(round)[1] or []))
        runner.model_for_labelling(round)
        task = runner.task
        kind = label_schema.schema(task)
        hints = label_schema.suggestions(task, outstanding, round)
        rows = []
        for item, hint in zip(outstanding, hints):
            info = {k: _url(v, media_url, media_root) if k in MEDIA else v
                    for k, v in label_schema.describe(task, item, kind).items()}
            rows.append((item, info, hint, scores.get(item)))
        path = Path(out) if out else run_dir / "exchange" / f"round_{round}{SUFFIX[fmt]}"
        if fmt == "label-studio" and path.suffix.lower() == ".xml":
            raise UserError(f"--out {path}: the tasks file must not end in .xml (the labelling config is written "
                            f"beside it as {path.stem}.xml)")
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "label-studio":
            version = f"{run_dir.name} round {round - 1}" if round > 0 else "untrained"
            tasks = [label_studio.task({**info, "item_id": item, "round": round, "score": score,
                                       "suggestion": None if hint is None else label_schema.show(hint, kind)},
                                      hint, score, kind, _size(task, item, kind), version)
                     for item, info, hint, score in rows]
            path.write_text(json.dumps(tasks, indent=1) + "\n", encoding="utf-8")
            config = path.with_suffix(".xml")
            config.write_text(label_studio.config_xml(kind, rows[0][1]), encoding="utf-8")
            return [path, config]
        records = [{"item_id": item, **info, "score": score, "label": None, "skip": False,
                    "suggestion": hint if kind.get("type") != "choices" else label_schema.choice_name(hint, kind)}
                   for item, info, hint, score in rows]
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        else:
            columns = list(dict.fromkeys(k for r in records for k in r))
            columns = [c for c in columns if c not in ("suggestion", "score", "label", "skip")] + \
                ["suggestion", "score", "label", "skip"]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, columns)
            writer.writeheader()
            for r in records:
                writer.writerow({c: "" if c == "skip" else label_schema.text_cell(r.get(c)) for c in columns})
            path.write_text(buffer.getvalue(), encoding="utf-8")
        return [path]
    except OSError as exc:
        raise UserError(f"--out {exc.filename or out}: cannot write: {exc.strerror or exc}") from exc
    finally:
        runner.close()


def _current(runner: Runner) -> tuple[int, list[str], list[str]]:
    round = runner.store.get_state("round", 0)
    batch = runner.store.batch(round)
    if batch is None:
        raise UserError(f"{runner.run_dir}: round {round} has no batch yet; `activelab resume {runner.run_dir}` "
                        f"selects it")
    frozen = runner.store.frozen_round()
    if round <= frozen:
        # the batch was trained on: its labels are final, and the next batch is not chosen yet
        state = runner.store.get_state("status", RunStatus.CREATED)
        raise UserError(f"{runner.run_dir}: round {round}'s batch was already trained on (status: {state}); its "
                        f"labels cannot change" + ("" if state == RunStatus.DONE else
                                                   f"; `activelab resume {runner.run_dir}` selects the next batch"))
    return round, batch[0], runner.pool.outstanding(round, batch[0])


def _url(path: Any, prefix: str | None, root: str | None) -> Any:
    if prefix is None or not isinstance(path, str) or "://" in path:
        return path
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root)) if root else path
    return prefix + quote(rel.replace(os.sep, "/"), safe="/")


def _size(task: Any, item: str, kind: dict[str, Any]) -> tuple[float, float] | None:
    """The image's (width, height), needed only to convert boxes to and from Label Studio's percentages."""
    if kind.get("type") != "rectangles":
        return None
    info = task.describe(item)
    if "width" in info and "height" in info:
        return float(info["width"]), float(info["height"])
    try:
        from PIL import Image

        with Image.open(info["image"]) as img:
            return float(img.width), float(img.height)
    except Exception:
        return None


# ------------------------------------------------------------------------------------------------- import
@dataclass
class Entry:
    """One answer as read from a file, before any check."""

    where: str                    # "task 12", "row 3", "line 5"
    item: str | None
    answer: str                   # "label", "skip" or "none" (not answered)
    raw: Any = None               # Label Studio result regions, a CSV cell, a JSON value
    annotator: str = ""
    round: int | None = None      # the round whose batch the answer was exported from, when the file says


@dataclass
class Report:
    round: int
    stored: int = 0
    skipped: int = 0
    replaced: int = 0
    unchanged: int = 0
    unanswered: int = 0
    problems: list[str] = field(default_factory=list)
    outstanding: int = 0
    batch_size: int = 0


def read_label_studio(text: str) -> list[Entry]:
    data = _json(text, "Label Studio JSON export")
    if not isinstance(data, list):
        raise UserError("not a Label Studio JSON export (expected a list of tasks)")
    out = []
    for n, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), dict):
            raise UserError(f"task #{n + 1}: not a Label Studio task (no 'data' object)")
        where = f"task {entry.get('id', '#' + str(n + 1))}"
        try:
            answer, result, who = label_studio.pick_annotation(entry)
        except ValueError as exc:
            raise UserError(f"{where}: {exc}") from None
        exported = entry["data"].get("round")
        out.append(Entry(where, _id(entry["data"].get("item_id")), answer, result, who,
                         exported if isinstance(exported, int) else None))
    return out


def read_csv(text: str) -> list[Entry]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise UserError(f"not readable as CSV: {exc}") from None
    missing = [c for c in ("item_id", "label") if c not in header]
    if missing:
        raise UserError(f"CSV header lacks {', '.join(missing)} (it has: {', '.join(header) or 'nothing'})")
    out = []
    for n, row in enumerate(rows, start=2):
        if None in row:
            raise UserError(f"row {n}: more cells than the header has columns")
        label, skip = row.get("label") or "", (row.get("skip") or "").strip().lower()
        answer = "skip" if skip in YES else "label" if label.strip() else "none"
        out.append(Entry(f"row {n}", _id(row.get("item_id")), answer, label.strip(), (row.get("annotator") or "csv")))
    return out


def read_jsonl(text: str) -> list[Entry]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = _json(line, f"line {n}")
        if not isinstance(record, dict):
            raise UserError(f"line {n}: expected a JSON object with item_id and label")
        answer = "skip" if record.get("skip") is True else "none" if record.get("label") is None else "label"
        out.append(Entry(f"line {n}", _id(record.get("item_id")), answer, record.get("label"),
                         str(record.get("annotator") or "jsonl")))
    return out


READERS: dict[str, Callable[[str], list[Entry]]] = {"label-studio": read_label_studio, "csv": read_csv,
                                                    "jsonl": read_jsonl}


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"{what}: invalid JSON: {exc}") from None
    except RecursionError:
        raise UserError(f"{what}: JSON nested too deeply to read") from None


def _id(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)) or str(value).strip() == "":
        return None
    return str(value).strip()


def import_answers(run_dir: str | Path, path: str | Path, fmt: str | None = None) -> Report:
    """Read a whole file of answers (nothing is stored if it cannot be parsed), then store every valid one."""
    path = Path(path)
    if fmt is None:
        fmt = BY_SUFFIX.get(path.suffix.lower())
        if fmt is None:
            raise UserError(f"{path}: cannot tell the format from the extension; pass --format "
                            f"({', '.join(FORMATS)})")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); nothing stored") from None
    try:
        entries = READERS[fmt](text)
    except UserError as exc:
        raise UserError(f"{path}: cannot parse as {fmt}: {exc}; nothing stored") from None
    runner = Runner(run_dir, progress=False)
    try:
        return _store(runner, entries, fmt, path.name)
    finally:
        runner.close()


def _store(runner: Runner, entries: list[Entry], fmt: str, name: str) -> Report:
    task, store, pool = runner.task, runner.store, runner.pool
    round, batch, _ = _current(runner)
    report = Report(round=round, batch_size=len(batch))
    kind, known, in_batch = label_schema.schema(task), set(task.pool_ids()), set(batch)

    found: list[tuple[int, str]] = []     # (position in the file, message): reported in file order
    order = {id(e): n for n, e in enumerate(entries)}

    def problem(e: Entry, text: str) -> None:
        found.append((order[id(e)], f"{name}: {e.where}" + (f", item {e.item!r}" if e.item else "") + f": {text}"))

    checked: list[tuple[Entry, Any]] = []
    for e in entries:
        if e.item is None:
            problem(e, "no item_id")
        elif e.item not in known:
            problem(e, "unknown item (not in the task's pool)")
        elif e.answer == "none":
            report.unanswered += 1
        elif e.answer == "skip":
            checked.append((e, None))
        else:
            try:
                checked.append((e, task.check_label(e.item, _value(task, e, fmt, kind))))
            except ValueError as exc:
                problem(e, f"label refused: {exc}")
    # A label wins over skips of the same item (say, skipped in one round's task and labelled in a later one's);
    # two different labels for one item are a problem.
    given: dict[str, set[str]] = {}
    for e, value in checked:
        if e.answer == "label":
            given.setdefault(e.item, set()).add(json.dumps(value, sort_keys=True))
    labelled = {item: (value, r) for item, value, r, _ in store.label_rows()}
    reported: set[str] = set()
    for e, value in checked:
        item = e.item
        if e.answer == "skip":
            if e.round is not None and e.round != round:
                report.unchanged += 1        # a skip in an earlier round's task says nothing about this batch
                continue
            fresh = item in in_batch and item not in given and labelled.get(item, (None, round))[1] == round
            if not fresh or (item in store.skipped(round) and item not in labelled):
                report.unchanged += 1        # a skip changes nothing outside its batch, or where a label is given
                continue
            if item in labelled:             # labelled earlier this round, skipped now: the later answer wins
                pool.replace(Skip(item, annotator=e.annotator), round, batch)
                del labelled[item]
                report.replaced += 1
            else:
                pool.apply(Skip(item, annotator=e.annotator), round, batch)
            report.skipped += 1
            continue
        if len(given[item]) > 1:
            if item not in reported:
                problem(e, "labelled differently more than once in this file; none of its labels stored")
                reported.add(item)
            continue
        if item in labelled:
            old, old_round = labelled[item]
            if json.dumps(old, sort_keys=True) == json.dumps(value, sort_keys=True):
                report.unchanged += 1
                continue
            if old_round != round or item not in in_batch:
                problem(e, f"already labelled {label_schema.show(old, kind)} in round {old_round} (trained on); "
                           f"not changed")
                continue
            pool.replace(Label(item, value, annotator=e.annotator or fmt), round, batch)
            labelled[item] = (value, round)
            report.replaced += 1
            report.stored += 1
            continue
        elif item not in in_batch:
            problem(e, f"not in round {round}'s batch")
            continue
        pool.apply(Label(item, value, annotator=e.annotator or fmt), round, batch)
        labelled[item] = (value, round)
        report.stored += 1
    report.problems = [text for _, text in sorted(found, key=lambda p: p[0])]
    report.outstanding = len(pool.outstanding(round, batch))
    if not report.outstanding and store.get_state("status") in (RunStatus.AWAITING_LABELS, RunStatus.PAUSED):
        store.set_state("status", RunStatus.LABELS_IMPORTED)
    return report


def _value(task: Any, e: Entry, fmt: str, kind: dict[str, Any]) -> Any:
    if fmt == "label-studio":
        value = label_studio.from_result(e.raw, kind, _size(task, e.item, kind))
        # free text goes through the task's parser, as typed text does (choices and boxes are structured)
        return (label_schema.parse(task, value, kind) if isinstance(value, str) and kind.get("type") != "choices"
                else value)
    if fmt == "csv":
        return label_schema.parse(task, e.raw, kind)
    if kind.get("type") == "text" and isinstance(e.raw, str) and not e.raw.strip():
        raise ValueError("empty text")
    return e.raw
