"""Sentence pairs for the translation task: every source becomes the same in-memory :class:`Corpus` pair.

Sources (``task.params.data.kind``):

- ``numbers`` (the pip-only demo): English number phrases and their renderings in ``target_lang`` by the num2words
  package ("ninety-nine" -> "quatre-vingt-dix-neuf"). ``size`` distinct numbers are drawn, seeded by
  ``data_seed``: a digit count uniform in 1..``max_digits``, then a number uniform among those with that many
  digits, so short and long phrases are equally common. Item ids are the numbers themselves (``"4213"``).
- ``ding``: the example sentences of the Ding German-English dictionary, read from Debian's ``trans-de-en``
  package (``/usr/share/trans/de-en``; GPL, so it is read where it is installed, never copied). Each line
  ``German :: English`` is split on `` :: `` and its parts on `` | ``; aligned parts that are sentences (both end
  in ``.``, ``?`` or ``!``, the English one starts with a capital and has at least 3 words, neither holds ``;``)
  are kept, with the ``{grammar}`` and ``[domain]`` annotations removed: about 18,000 pairs.
  Ids are ``"<line>.<part>"``.
- ``text``: two aligned plain-text files, one sentence per line (``source_path``, ``target_path``; optional
  ``test_source_path``/``test_target_path``). Ids are line numbers (``"1"`` = the first line).
- ``tsv``: one ``source<TAB>target`` pair per line (``path``, optional ``test_path``); further columns are ignored.
- ``hf_disk``: a Hugging Face dataset saved with ``save_to_disk``: a ``translation`` column of
  ``{lang: text}`` dicts (the Hub's translation format; ``source_lang``/``target_lang`` pick the languages) or
  two text columns (``source_column``/``target_column``); ``split``/``test_split`` by the rule of
  :mod:`activelab.torchkit.hf`. Ids are the row numbers.

Files must be UTF-8; an undecodable byte, an empty sentence, a sentence with a control character (the rule of
:func:`check_text`, which the task's label check applies too, so a reference a reader accepts is never refused
while labelling), a TSV line without a tab or aligned files of different lengths are :class:`UserError` s naming
the file and the line (a dataset: the row). The test split is the source's own
where it has one, else a seeded ``test_fraction`` of the pairs; ``max_pool``/``max_test`` cut either down by a
seeded sample.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab.errors import UserError
from activelab.protocol import rng_for
from activelab.recipe import DataPath
from activelab.text import control_character
from activelab.torchkit.hf import load_from_disk, require_columns

FIELD = "task.params.data"        # where these settings live in a recipe; user errors name it
DING_PATH = "/usr/share/trans/de-en"


class DataConfig(BaseModel):
    """Where the sentence pairs come from and how many to use."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["numbers", "ding", "text", "tsv", "hf_disk"] = "numbers"
    source_lang: str = "en"
    target_lang: str = "fr"               # numbers: any num2words language (fr, de, es, ...)
    # numbers
    size: int = Field(2400, ge=4, description="numbers: distinct numbers drawn (pool + test)")
    max_digits: int = Field(6, ge=1, le=12, description="numbers: longest number, in digits")
    data_seed: int = 0
    # files
    path: DataPath | None = None              # tsv file, hf_disk folder, ding file (default /usr/share/trans/de-en)
    test_path: DataPath | None = None         # tsv: a separate test file
    source_path: DataPath | None = None       # text
    target_path: DataPath | None = None       # text
    test_source_path: DataPath | None = None  # text: a separate test split
    test_target_path: DataPath | None = None
    source_column: str | None = None      # hf_disk without a translation column
    target_column: str | None = None
    split: str | None = None              # hf_disk: the pool split of a DatasetDict (default: train)
    test_split: str | None = None         # hf_disk: the test split (default: "test" when there is one)
    # sizes
    test_fraction: float = Field(0.1, gt=0, lt=1)
    max_words: int | None = Field(None, ge=1, description="drop pairs whose source or target has more words")
    max_pool: int | None = Field(None, ge=2)
    max_test: int | None = Field(None, ge=1)


@dataclass
class Pairs:
    """Aligned source and target sentences with their string ids."""

    ids: list[str]
    sources: list[str]
    targets: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "Pairs":
        index = [int(i) for i in index]
        return Pairs([self.ids[i] for i in index], [self.sources[i] for i in index], [self.targets[i] for i in index])


@dataclass
class TranslationData:
    pool: Pairs
    test: Pairs


# ------------------------------------------------------------------------------------------ sentences
def check_text(value: Any) -> str:
    """A sentence (a translation label, or a sentence of the data): a non-empty one-line string without control
    characters; returned stripped. A ValueError says what is wrong."""
    if not isinstance(value, str):
        raise ValueError(f"a translation must be text, got {type(value).__name__} {value!r}")
    text = value.strip()
    if not text:
        raise ValueError("a translation must not be empty")
    bad = control_character(text)
    if bad is not None:
        raise ValueError(f"a translation must be one line without control characters (found {bad})")
    return text


def _sentence(value: Any, where: str, side: str) -> str:
    """``value`` stripped, if :func:`check_text` accepts it; else a UserError naming ``where`` and the side."""
    try:
        return check_text(value)
    except ValueError as exc:
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: empty or non-text {side} sentence ({value!r})") from None
        rule = str(exc).removeprefix("a translation ")
        raise UserError(f"{where}: {side} sentence {value.strip()[:60]!r}: {rule}") from None


# ------------------------------------------------------------------------------------------ reading files
def _need(value: Path | None, name: str, kind: str) -> Path:
    if not value:
        raise UserError(f"{FIELD}.{name}: required for kind {kind}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"{FIELD}.{name}: {path}: file not found")
    return path


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a final newline ends the last line; ``\\r\\n`` is accepted); an
    undecodable byte or an empty line is a :class:`UserError` naming the file and the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]                                    # a UTF-8 byte order mark
    pieces = raw.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    lines = []
    for number, piece in enumerate(pieces, start=1):
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: line {number}: not UTF-8 "
                            f"({exc.reason} at byte {exc.start + 1} of the line)") from None
        text = text.rstrip("\r")
        if not text.strip():
            raise UserError(f"{path}: line {number}: empty line (every line must hold a sentence)")
        lines.append(text.strip())
    if not lines:
        raise UserError(f"{path}: no sentences (the file is empty)")
    return lines


def read_aligned(source: Path, target: Path) -> Pairs:
    src, tgt = read_lines(source), read_lines(target)
    if len(src) != len(tgt):
        short, long_ = (source, target) if len(src) < len(tgt) else (target, source)
        n = min(len(src), len(tgt))
        raise UserError(f"{long_}: line {n + 1}: has no aligned line in {short} ({max(len(src), len(tgt))} lines vs "
                        f"{n}; the files must be aligned line by line)")
    for path, lines, side in ((source, src, "source"), (target, tgt, "target")):
        for number, line in enumerate(lines, start=1):
            _sentence(line, f"{path}: line {number}", side)
    return Pairs([str(i) for i in range(1, len(src) + 1)], src, tgt)


def read_tsv(path: Path) -> Pairs:
    ids, src, tgt = [], [], []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise UserError(f"{path}: line {number}: expected source<TAB>target, found no tab")
        source, target = fields[0].strip(), fields[1].strip()
        if not source or not target:
            side = "source" if not source else "target"
            raise UserError(f"{path}: line {number}: empty {side} sentence")
        _sentence(source, f"{path}: line {number}", "source")
        _sentence(target, f"{path}: line {number}", "target")
        ids.append(str(number))
        src.append(source)
        tgt.append(target)
    return Pairs(ids, src, tgt)


# ------------------------------------------------------------------------------------------ sources
def numbers(cfg: DataConfig) -> Pairs:
    try:
        from num2words import num2words
    except ImportError:
        raise UserError(f"{FIELD}.kind: numbers needs the num2words package: pip install 'activelab[nlp]'") from None
    rng = rng_for(cfg.data_seed, "nlp-numbers")
    distinct = 10 ** cfg.max_digits
    if cfg.size > distinct // 2:
        raise UserError(f"{FIELD}.size: {cfg.size} distinct numbers of at most {cfg.max_digits} digits asks for too "
                        f"many of the {distinct}; raise max_digits or lower size")
    chosen: dict[int, None] = {}
    while len(chosen) < cfg.size:
        digits = int(rng.integers(1, cfg.max_digits + 1))
        low = 0 if digits == 1 else 10 ** (digits - 1)
        chosen.setdefault(int(rng.integers(low, 10 ** digits)), None)
    values = list(chosen)
    try:
        src = [num2words(v, lang=cfg.source_lang) for v in values]
        tgt = [num2words(v, lang=cfg.target_lang) for v in values]
    except NotImplementedError as exc:
        raise UserError(f"{FIELD}: num2words has no language {cfg.source_lang!r} or {cfg.target_lang!r} "
                        f"({exc})") from None
    return Pairs([str(v) for v in values], src, tgt)


_ANNOTATION = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\])")
_SENTENCE_END = re.compile(r"[.?!]$")


def ding(cfg: DataConfig) -> Pairs:
    """The Ding dictionary's example sentences (see the module doc); English and German in the direction asked."""
    path = Path(cfg.path or DING_PATH)
    if not path.is_file():
        if cfg.path:
            raise UserError(f"{FIELD}.path: {path}: file not found")
        raise UserError(f"{path}: not found; the ding corpus comes from Debian's trans-de-en package: "
                        f"apt-get install trans-de-en")
    langs = {cfg.source_lang, cfg.target_lang}
    if langs != {"en", "de"}:
        raise UserError(f"{FIELD}.source_lang/target_lang: the ding corpus is English-German (got "
                        f"{cfg.source_lang}->{cfg.target_lang})")
    ids, english, german = [], [], []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}: line {number}: not UTF-8 ({exc.reason})") from None
            if line.startswith("#") or " :: " not in line:
                continue
            de, en = line.split(" :: ", 1)
            de_parts, en_parts = de.split(" | "), en.split(" | ")
            if len(de_parts) != len(en_parts):
                continue
            for part, (d, e) in enumerate(zip(de_parts, en_parts)):
                d, e = _ANNOTATION.sub("", d).strip(), _ANNOTATION.sub("", e).strip()
                if (_SENTENCE_END.search(d) and _SENTENCE_END.search(e) and e[:1].isupper()
                        and len(e.split()) >= 3 and ";" not in d + e):
                    _sentence(d, f"{path}: line {number}", "German")
                    _sentence(e, f"{path}: line {number}", "English")
                    ids.append(f"{number}.{part}")
                    english.append(e)
                    german.append(d)
    if not ids:
        raise UserError(f"{path}: no example sentences found (is it the Ding de-en dictionary?)")
    return Pairs(ids, english, german) if cfg.source_lang == "en" else Pairs(ids, german, english)


def hf_disk(cfg: DataConfig) -> tuple[Pairs, Pairs | None]:
    hf = load_from_disk(cfg.path, cfg.split, cfg.test_split, field=FIELD)   # the split rule: activelab.torchkit.hf
    test = None if hf.test is None else _hf_pairs(hf.test, cfg, hf.test_where)
    return _hf_pairs(hf.pool, cfg, hf.pool_where), test


def _hf_pairs(ds, cfg: DataConfig, where: str) -> Pairs:
    columns = list(ds.column_names)
    if cfg.source_column or cfg.target_column:
        require_columns(ds, {"source_column": cfg.source_column, "target_column": cfg.target_column}, FIELD, where)
        src, tgt = list(ds[cfg.source_column]), list(ds[cfg.target_column])
    elif "translation" in columns:
        rows = list(ds["translation"])
        for number, row in enumerate(rows):
            if not isinstance(row, dict) or cfg.source_lang not in row or cfg.target_lang not in row:
                have = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise UserError(f"{where}: row {number}: translation has no {cfg.source_lang!r} "
                                f"and {cfg.target_lang!r} (it has {have}); set {FIELD}.source_lang/target_lang")
        src, tgt = [r[cfg.source_lang] for r in rows], [r[cfg.target_lang] for r in rows]
    else:
        raise UserError(f"{FIELD}.source_column: {where} has no translation column; name the text columns with "
                        f"source_column and target_column (columns: {', '.join(columns)})")
    for number, (s, t) in enumerate(zip(src, tgt)):
        for side, text in (("source", s), ("target", t)):
            _sentence(text, f"{where}: row {number}", side)
    return Pairs([str(i) for i in range(len(src))], [s.strip() for s in src], [t.strip() for t in tgt])


# ------------------------------------------------------------------------------------------ assembling
def _sample(pairs: Pairs, n: int | None, rng: np.random.Generator) -> Pairs:
    if n is None or n >= len(pairs):
        return pairs
    return pairs.take(np.sort(rng.choice(len(pairs), size=n, replace=False)))


def _short(pairs: Pairs, max_words: int | None) -> Pairs:
    if max_words is None:
        return pairs
    keep = [i for i, (s, t) in enumerate(zip(pairs.sources, pairs.targets))
            if len(s.split()) <= max_words and len(t.split()) <= max_words]
    return pairs.take(np.asarray(keep, dtype=np.int64))


def load_data(cfg: DataConfig) -> TranslationData:
    """Read the configured source; split off a test set when it has none; apply the size limits (seeded by
    ``data_seed``, not the run's seed, so every seed of a comparison sees the same pool and test set)."""
    test: Pairs | None = None
    if cfg.kind == "numbers":
        pool = numbers(cfg)
    elif cfg.kind == "ding":
        pool = ding(cfg)
    elif cfg.kind == "text":
        pool = read_aligned(_need(cfg.source_path, "source_path", "text"),
                            _need(cfg.target_path, "target_path", "text"))
        if cfg.test_source_path or cfg.test_target_path:
            test = read_aligned(_need(cfg.test_source_path, "test_source_path", "text"),
                                _need(cfg.test_target_path, "test_target_path", "text"))
    elif cfg.kind == "tsv":
        pool = read_tsv(_need(cfg.path, "path", "tsv"))
        if cfg.test_path:
            test = read_tsv(_need(cfg.test_path, "test_path", "tsv"))
    else:
        pool, test = hf_disk(cfg)
    pool = _short(pool, cfg.max_words)
    rng = rng_for(cfg.data_seed, "nlp-split")
    if test is None:
        n_test = int(round(cfg.test_fraction * len(pool)))
        if n_test < 1 or n_test > len(pool) - 2:
            raise UserError(f"{FIELD}.test_fraction: {cfg.test_fraction} of {len(pool)} pairs "
                            f"leaves no test set or no pool")
        order = rng.permutation(len(pool))
        test, pool = pool.take(np.sort(order[:n_test])), pool.take(np.sort(order[n_test:]))
    else:
        test = _short(test, cfg.max_words)
    pool, test = _sample(pool, cfg.max_pool, rng), _sample(test, cfg.max_test, rng)
    if len(pool) < 2 or len(test) < 1:
        raise UserError(f"{FIELD}: {len(pool)} pool and {len(test)} test pairs are too few (max_words too small?)")
    if len(set(pool.ids)) != len(pool.ids):
        raise UserError(f"{FIELD}: duplicate item ids in the pool")
    return TranslationData(pool=pool, test=test)
