"""Speech data for the recognition task: every source becomes the same in-memory :class:`SpeechData`, lists of
:class:`Utterance` (an id, an absolute audio path, a normalised transcript, an optional speaker).

Sources (``task.params.data.kind``):

- ``manifest``: a manifest file (``path``), JSON lines (``.jsonl``/``.json``, or any suffix but ``.csv``: one
  object per line, blank lines skipped) or CSV with a header. Keys/columns: the audio file (``audio``, ``path``,
  ``audio_filepath`` or ``file_name``; relative paths resolve against the manifest's folder), the transcript
  (``text``, ``transcript``, ``transcription`` or ``sentence``), optional ``speaker`` and ``id``; other keys are
  ignored. The id is the ``id`` field, else the audio path as written in the manifest. A CSV record must lie on
  one line and is read strictly: a quoted field running over lines (an unterminated quote would otherwise
  swallow every row after it) or a stray character after a closing quote is an error naming the line.
  ``generate: {utterances: N, test_utterances: M}`` (``path`` must then name a ``train.jsonl``, ``test_path``,
  if given, the ``test.jsonl`` beside it) makes the spoken-commands demo set (:mod:`.synth`) in that folder when
  the manifests are missing, atomically, with a line on stderr; a folder the generator made with other settings
  is refused. Without ``generate``, a missing ``.../spoken_commands/train.jsonl`` names the command that makes it.
- ``audiofolder``: the Hugging Face audiofolder convention read directly (no ``datasets`` needed): a folder
  (``path``) with audio files and a ``metadata.jsonl`` or ``metadata.csv`` whose ``file_name`` is relative to the
  folder; or a folder with ``train/`` and ``test/`` subfolders laid out so (``test/`` becomes the test set).
- ``hf_disk``: a Hugging Face dataset written by ``save_to_disk`` (a Dataset or a DatasetDict: ``split`` is the
  pool, default ``train``; a split named ``test`` is the test set: the rule of :mod:`activelab.torchkit.hf`).
  The audio column (``audio_column``) is cast to ``Audio(decode=False)`` so nothing depends on torchcodec. An
  item whose absolute ``path`` exists is read from there; an item that carries bytes (``save_to_disk`` embeds
  them) is written once to a content-addressed cache folder, ``$ACTIVELAB_AUDIO_CACHE``, else
  ``$XDG_CACHE_HOME/activelab/audio`` (``~/.cache/activelab/audio``), named by the SHA-256 of the bytes, so a
  second load writes nothing. A column of plain path strings
  (relative ones resolve against the dataset folder, else the working folder) or of ``{"array",
  "sampling_rate"}`` dicts (written to the cache as float WAV) works too. The id is an ``id`` column if there is
  one, else the stored audio paths when they are all distinct, else the row number (``train/3`` in a
  DatasetDict); the speaker is a ``speaker``, ``speaker_id`` or ``client_id`` column if there is one.
- ``pocketsphinx``: the real recordings in Debian's ``pocketsphinx-testdata`` (``path`` defaults to
  ``/usr/share/pocketsphinx/test/data``): every sphinx transcription file (``*.transcription``, ``transcription``,
  ``*.lsn``; lines ``<s> TEXT </s> (fileid)`` or ``TEXT (fileid)``) whose ``fileid.wav`` lies beside it; the
  speaker is the folder. A smoke test of the real-audio path (10 utterances: ``cards`` and ``librivox``).

A transcript with a control character (other than tab, newline and carriage return) is refused by every reader,
naming its line or row: it is the rule :func:`transcript_problem` that the task's label check applies too.

``test_path`` names a separate test set of the same kind; without one, a seeded ``test_fraction`` is held out
(``split_by_speaker``: whole speakers, utterances without a speaker each count as their own). ``limit`` keeps a
seeded subset of the pool. All randomness comes from ``numpy.random.default_rng`` streams of the seed
(:func:`activelab.protocol.rng_for`), so the split is deterministic and disjoint.

Every audio file that ends up in the pool or the test set is checked up front with ``soundfile.info`` (readable,
not empty, its rate, ``max_seconds``), and a floating-point file's samples are read to refuse NaN or infinity
(:func:`read_audio` refuses them too). All problems in a manifest are collected and raised as one
:class:`ManifestError` whose one-line message is the first problem plus ``(and N more problems)``; each problem
names the manifest file and line (``data/m.jsonl:7: missing "text"``).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from activelab.errors import ProblemsError, UserError
from activelab.protocol import rng_for
from activelab.recipe import DataPath
from activelab.text import control_character
from activelab.torchkit.hf import load_from_disk, require_columns

FIELD = "task.params.data"        # where these settings live in a recipe; user errors name it
POCKETSPHINX_DIR = "/usr/share/pocketsphinx/test/data"
AUDIO_KEYS = ("audio", "path", "audio_filepath", "file_name")
TEXT_KEYS = ("text", "transcript", "transcription", "sentence")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "client_id")


@dataclass(frozen=True)
class Utterance:
    """One recording and what was said in it."""

    id: str                 # stable unique item id: the manifest's "id", else the audio path as written there
    path: Path              # absolute audio path
    transcript: str         # normalised by normalise_transcript
    speaker: str | None = None


@dataclass
class SpeechData:
    pool: list[Utterance]
    test: list[Utterance]
    sample_rate: int


class GenerateConfig(BaseModel):
    """The spoken-commands demo set (:mod:`.synth`) to make on first use: the arguments of
    ``python -m activelab.plugins.speech.synth FOLDER --utterances N --test-utterances M --seed S``."""

    model_config = ConfigDict(extra="forbid")

    utterances: int = Field(ge=1)                 # pool (train.jsonl) utterances
    test_utterances: int = Field(ge=1)            # test.jsonl utterances
    seed: int = 0


class SpeechDataConfig(BaseModel):
    """Where the recordings come from, how they are split and checked."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["manifest", "hf_disk", "audiofolder", "pocketsphinx"] = "manifest"
    path: DataPath | None = None      # manifest file, saved HF dataset folder, audiofolder, pocketsphinx data folder
    test_path: DataPath | None = None  # a held-out set of the same kind; None = split off test_fraction
    split: str | None = None          # hf_disk: the pool split of a DatasetDict (default "train")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_by_speaker: bool = False    # hold out whole speakers
    sample_rate: int = Field(16000, ge=1000)
    resample: bool = True             # False: a file at another rate is an error
    max_seconds: float | None = Field(None, gt=0)   # a longer utterance is an error naming its file
    limit: int | None = Field(None, ge=1)           # at most this many pool utterances (seeded subset)
    audio_column: str = "audio"       # hf_disk
    text_column: str = "text"         # hf_disk
    # kind manifest: when path (a train.jsonl) is missing, make the spoken-commands set in its folder first
    generate: GenerateConfig | None = None

    @field_validator("generate")
    @classmethod
    def _generate_needs_a_train_manifest(cls, value: GenerateConfig | None, info: ValidationInfo):
        if value is None or not {"kind", "path", "test_path"} <= set(info.data):
            return value                      # a field it depends on has its own error
        kind, path, test_path = info.data["kind"], info.data["path"], info.data["test_path"]
        if kind != "manifest":
            raise PydanticCustomError("generate", "only for kind manifest (got kind {kind})", {"kind": kind})
        if path is None or path.name != "train.jsonl":
            raise PydanticCustomError(
                "generate", "makes train.jsonl and test.jsonl in one folder: path must name its train.jsonl "
                "(got {path})", {"path": str(path) if path else "no path"})
        if test_path is not None and os.path.abspath(test_path) != os.path.abspath(path.parent / "test.jsonl"):
            raise PydanticCustomError(
                "generate", "makes the test set as {want}: test_path must be that file or left out (got {got})",
                {"want": str(path.parent / "test.jsonl"), "got": str(test_path)})
        return value


class ManifestError(ProblemsError):
    """Every problem found in the data; ``str(err)`` is the first one plus a count of the rest."""


_SPACE = re.compile(r"\s+")


def normalise_transcript(text: str) -> str:
    """Unicode NFC, lower case, runs of whitespace to one space, no leading or trailing space."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def transcript_problem(text: str) -> str | None:
    """Why ``text`` can never be a transcript label, or None: the one rule the data readers and
    ``RecognitionTask.check_label`` share, so a transcript a reader accepts is never refused while labelling.
    Today: a control character other than tab, newline and carriage return (those normalise to a space)."""
    bad = control_character(text, allow="\t\n\r")
    return None if bad is None else f"it contains a control character ({bad})"


# ------------------------------------------------------------------------------------------ manifests
@dataclass
class _Row:
    where: str               # "file:line", for messages
    audio: str               # as written in the manifest
    utt: Utterance


def _first(record: dict, keys: tuple[str, ...]) -> tuple[str | None, object]:
    for key in keys:
        if key in record:
            return key, record[key]
    return None, None


def _shown(text: str) -> str:
    """A value from the data as a message shows it: as it is, or quoted with escapes when it holds a line break or
    another unprintable character (a message is one line)."""
    return text if text.isprintable() else repr(text)


def _field_list(keys: tuple[str, ...]) -> str:
    return ", ".join(f'"{k}"' for k in keys[1:])


def _records(path: Path, problems: list[str]) -> list[tuple[str, dict | str]]:
    """(``file:line``, record) for each record of a JSON-lines or CSV manifest, in file order; a line that is
    not a record gives (``file:line``, problem) instead, and a bad CSV header is appended to ``problems``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read manifest ({exc.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ManifestError([f"{path}:{line}: not UTF-8 ({exc.reason})"]) from None
    out: list[tuple[str, dict | str]] = []
    if path.suffix.lower() == ".csv":
        # strict: a stray quote is an error instead of text; and a record must lie on one line, since an
        # unterminated quote otherwise makes one field of every line after it (the rows are silently lost)
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header: list[str] | None = None
        rows = iter(reader)
        while True:
            start = reader.line_num + 1          # the line this record begins on
            try:
                row = next(rows)
            except StopIteration:
                break
            except csv.Error as exc:
                where = f"{path}:{start}"
                if str(exc) == "unexpected end of data":
                    problem = ("unterminated quote: the quoted field that starts on this line runs to the end of "
                               "the file")
                elif reader.line_num > start:
                    problem = (f"unterminated quote? the quoted field that starts on this line runs on to line "
                               f"{reader.line_num} and breaks there ({exc})")
                else:
                    problem = f"malformed CSV ({exc})"
                out.append((where, f"{where}: {problem}"))
                return out                      # the reader cannot tell where the next record starts
            if reader.line_num > start:
                out.append((f"{path}:{start}", f"{path}:{start}: unterminated quote? a quoted field runs over lines "
                            f"{start}-{reader.line_num} (every record must be on one line)"))
                continue
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                lacking = [(keys, what) for keys, what in ((AUDIO_KEYS, "audio"), (TEXT_KEYS, "text"))
                           if not any(k in header for k in keys)]
                for keys, what in lacking:
                    problems.append(f'{path}:{reader.line_num}: no "{what}" column (also accepted: '
                                    f'{_field_list(keys)}; the header has: {", ".join(map(_shown, header))})')
                if lacking:
                    return []
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) > len(header):
                out.append((where, f"{where}: {len(row)} fields, the header has {len(header)}"))
                continue
            out.append((where, {k: v for k, v in zip(header, row)}))
        return out
    # lines end at "\n" only: str.splitlines would also split inside a JSON string at U+2028, U+0085, ...
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append((where, f"{where}: not valid JSON ({exc.msg})"))
            continue
        except RecursionError:
            out.append((where, f"{where}: JSON nested too deeply to read"))
            continue
        except ValueError:             # an integer longer than Python converts (sys.get_int_max_str_digits)
            out.append((where, f"{where}: not valid JSON (a number with too many digits)"))
            continue
        if not isinstance(record, dict):
            out.append((where, f"{where}: not a JSON object (found {type(record).__name__})"))
            continue
        out.append((where, record))
    return out


def _resolve(base: Path, written: str) -> Path:
    path = Path(os.path.expanduser(written))         # Path.expanduser raises for an unknown ~user
    return Path(os.path.abspath(path if path.is_absolute() else base / path))


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but False where the system refuses to look the name up (too long, ...) instead of an
    OSError: a name in the data that is no file is a problem to report, not a crash."""
    try:
        return path.is_file()
    except OSError:
        return False


def _read_rows(path: Path, problems: list[str]) -> list[_Row]:
    """The utterances of a manifest with where each came from; every problem is appended, none raised."""
    base = Path(os.path.abspath(path)).parent
    rows: list[_Row] = []
    seen: dict[str, str] = {}
    for where, record in _records(path, problems):
        if isinstance(record, str):
            problems.append(record)
            continue
        audio_key, audio = _first(record, AUDIO_KEYS)
        text_key, text = _first(record, TEXT_KEYS)
        bad = False
        if audio_key is None or audio is None or (isinstance(audio, str) and not audio.strip()):
            problems.append(f'{where}: missing "audio" (also accepted: {_field_list(AUDIO_KEYS)})'
                            if audio_key is None else f'{where}: empty "{audio_key}"')
            bad = True
        elif not isinstance(audio, str):
            problems.append(f'{where}: "{audio_key}" must be a path string, found {type(audio).__name__}')
            bad = True
        if text_key is None or text is None:
            problems.append(f'{where}: missing "text" (also accepted: {_field_list(TEXT_KEYS)})')
            bad = True
        elif not isinstance(text, str):
            problems.append(f'{where}: "{text_key}" must be a string, found {type(text).__name__}')
            bad = True
        elif problem := transcript_problem(text):
            problems.append(f'{where}: "{text_key}" {text[:60]!r}: {problem}')
            bad = True
        elif not normalise_transcript(text):
            problems.append(f'{where}: empty transcript')
            bad = True
        if bad:
            continue
        audio = audio.strip()
        file = _resolve(base, audio)
        if not _is_file(file):
            problems.append(f"{where}: audio file {_shown(audio)} not found")
            continue
        ident = record.get("id")
        ident = audio if ident is None or (isinstance(ident, str) and not ident.strip()) else str(ident).strip()
        if ident in seen:
            problems.append(f'{where}: duplicate id "{_shown(ident)}" (first at {seen[ident]})')
            continue
        seen[ident] = where
        speaker = record.get("speaker")
        speaker = None if speaker is None or not str(speaker).strip() else str(speaker).strip()
        rows.append(_Row(where, audio, Utterance(ident, file, normalise_transcript(text), speaker)))
    if not rows and not problems:
        problems.append(f"{path}: no utterances")
    return rows


def read_manifest(path: Path) -> list[Utterance]:
    """The utterances of a JSON-lines or CSV manifest (see the module doc); any problem, including an audio
    file that does not exist, raises one :class:`ManifestError` listing them all. Audio contents are not read."""
    path = Path(path)
    problems: list[str] = []
    rows = _read_rows(path, problems)
    if problems:
        raise ManifestError(problems)
    return [r.utt for r in rows]


# ------------------------------------------------------------------------------------------ audio
def _soundfile_message(exc: Exception) -> str:
    text = getattr(exc, "error_string", None) or str(exc)
    return " ".join(str(text).split())


def _non_finite(samples: np.ndarray) -> str | None:
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    return f"{bad} of {samples.size} samples are not finite (NaN or infinity)" if bad else None


# the only sample formats that can hold NaN or infinity; integer PCM and the like cannot
FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})


def audio_problem(path: Path, sample_rate: int, resample: bool, max_seconds: float | None,
                  shown: str | None = None) -> str | None:
    """Why ``path`` cannot be used (unreadable, empty, wrong rate, too long, non-finite samples), or None; cheap:
    reads the header, and the samples only of a floating-point file (the only kind that can hold NaN)."""
    import soundfile as sf
    shown = shown or str(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:       # soundfile.LibsndfileError, RuntimeError, OSError, ...
        return f"{shown}: unreadable audio (soundfile: {_soundfile_message(exc)})"
    if info.frames <= 0:
        return f"{shown}: empty audio (0 samples)"
    if info.samplerate != sample_rate and not resample:
        return f"{shown}: sample rate {info.samplerate} Hz, expected {sample_rate} (set resample: true to convert)"
    if max_seconds is not None and info.frames / info.samplerate > max_seconds:
        return (f"{shown}: {info.frames / info.samplerate:.2f} s long, more than max_seconds {max_seconds:g} "
                f"(raise max_seconds or drop the file)")
    if info.subtype in FLOAT_SUBTYPES:
        try:
            samples, _ = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as exc:
            return f"{shown}: unreadable audio (soundfile: {_soundfile_message(exc)})"
        problem = _non_finite(samples)
        if problem:
            return f"{shown}: {problem}"
    return None


def audio_fingerprint(path: Path) -> list[int]:
    """[bytes, frames, sample rate, channels] of an audio file: what a data fingerprint records of it (a header
    read, no samples); a file that went missing or broke since it was checked is a UserError naming it."""
    import soundfile as sf
    try:
        size = os.stat(path).st_size
        info = sf.info(str(path))
    except Exception as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else _soundfile_message(exc)
        raise UserError(f"{path}: cannot read audio ({message})") from None
    return [int(size), int(info.frames), int(info.samplerate), int(info.channels)]


def read_audio(path: Path, sample_rate: int, resample: bool = True) -> torch.Tensor:
    """The recording as a 1-d float32 tensor at ``sample_rate``: soundfile reads it, channels are averaged, other
    rates are converted by ``torchaudio.functional.resample`` (``resample=False``: a UserError instead)."""
    import soundfile as sf
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise UserError(f"{path}: unreadable audio (soundfile: {_soundfile_message(exc)})") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: empty audio (0 samples)")
    problem = _non_finite(data)
    if problem:
        raise UserError(f"{path}: {problem}")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]))
    if rate != sample_rate:
        if not resample:
            raise UserError(f"{path}: sample rate {rate} Hz, expected {sample_rate} (set resample: true to convert)")
        import torchaudio.functional as AF
        wave = AF.resample(wave, int(rate), int(sample_rate))
    return wave.to(torch.float32).contiguous()


# ------------------------------------------------------------------------------------------ sources
def _need_path(value: Path | None, name: str, kind: str, folder: bool) -> Path:
    if not value:
        raise UserError(f"{FIELD}.{name}: required for kind {kind}")
    path = Path(value).expanduser()
    if folder and not path.is_dir():
        raise UserError(f"{FIELD}.{name}: {path}: folder not found")
    if not folder and not path.is_file():
        hint = ""
        if kind == "manifest" and path.parent.name == "spoken_commands" and path.name in ("train.jsonl", "test.jsonl"):
            from .synth import DEMO_TEST_UTTERANCES, DEMO_UTTERANCES, command
            hint = (f"; the spoken-commands demo data is made by `"
                    f"{command(path.parent, DEMO_UTTERANCES, DEMO_TEST_UTTERANCES)}`, or on first use with "
                    f"{FIELD}.generate: {{utterances: {DEMO_UTTERANCES}, test_utterances: {DEMO_TEST_UTTERANCES}}}")
        raise UserError(f"{FIELD}.{name}: {path}: file not found{hint}")
    return path


def _audiofolder_rows(folder: Path, problems: list[str]) -> list[_Row]:
    for name in ("metadata.jsonl", "metadata.csv"):
        if (folder / name).is_file():
            return _read_rows(folder / name, problems)
    raise UserError(f"{folder}: no metadata.jsonl or metadata.csv (an audiofolder lists its files and transcripts "
                    f"there, with a file_name column)")


def _audiofolder(folder: Path, problems: list[str]) -> tuple[list[_Row], list[_Row] | None]:
    if not any((folder / n).is_file() for n in ("metadata.jsonl", "metadata.csv")) and (folder / "train").is_dir():
        test = _audiofolder_rows(folder / "test", problems) if (folder / "test").is_dir() else None
        return _audiofolder_rows(folder / "train", problems), test
    return _audiofolder_rows(folder, problems), None


def audio_cache_dir() -> Path:
    """Where audio that a dataset holds only as bytes is written (content-addressed; see the module doc)."""
    env = os.environ.get("ACTIVELAB_AUDIO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "activelab" / "audio"


def _cache_bytes(data: bytes, suffix: str) -> Path:
    folder = audio_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    suffix = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,5}", suffix or "") else ".audio"
    target = folder / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix.lower()}"
    if not target.is_file() or target.stat().st_size != len(data):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


def _cache_array(array, rate: int) -> Path:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, np.asarray(array, dtype=np.float32), int(rate), format="WAV", subtype="FLOAT")
    return _cache_bytes(buf.getvalue(), ".wav")


def _hf_path(base: Path, stored: str) -> Path:
    """A path stored in a dataset: absolute, or relative to the dataset folder, else to the working folder."""
    inside = _resolve(base, stored)
    if _is_file(inside) or Path(os.path.expanduser(stored)).is_absolute():
        return inside
    here = _resolve(Path.cwd(), stored)
    return here if _is_file(here) else inside


def _hf_rows(ds, cfg: SpeechDataConfig, where: str, base: Path, problems: list[str],
             split: str | None = None) -> list[_Row]:
    import datasets
    columns = list(ds.column_names)
    require_columns(ds, {"audio_column": cfg.audio_column, "text_column": cfg.text_column}, FIELD, where)
    if isinstance(ds.features[cfg.audio_column], datasets.Audio):
        ds = ds.cast_column(cfg.audio_column, datasets.Audio(decode=False))
    audio = list(ds[cfg.audio_column])
    texts = list(ds[cfg.text_column])
    speaker_col = next((c for c in SPEAKER_COLUMNS if c in columns), None)
    speakers = list(ds[speaker_col]) if speaker_col else [None] * len(texts)
    stored = [a if isinstance(a, str) else (a.get("path") if isinstance(a, dict) else None) for a in audio]
    if "id" in columns:
        ids = [str(i) for i in ds["id"]]
    elif all(stored) and len(set(stored)) == len(stored):
        ids = [str(s) for s in stored]
    else:
        ids = [f"{split}/{i}" if split else str(i) for i in range(len(texts))]
    rows: list[_Row] = []
    seen: dict[str, str] = {}
    for number, (item, text, speaker, ident) in enumerate(zip(audio, texts, speakers, ids)):
        here = f"{where} row {number}"
        if not isinstance(text, str) or not normalise_transcript(text):
            problems.append(f"{here}: empty or non-text transcript ({text!r})")
            continue
        if problem := transcript_problem(text):
            problems.append(f"{here}: transcript {text[:60]!r}: {problem}")
            continue
        file: Path | None = None
        if isinstance(item, str):
            file = _hf_path(base, item)
        elif isinstance(item, dict):
            if (item.get("path") and Path(os.path.expanduser(item["path"])).is_absolute()
                    and _is_file(Path(item["path"]))):
                file = Path(item["path"])                 # the original file is still there: no copy
            elif item.get("bytes"):
                file = _cache_bytes(item["bytes"], Path(item.get("path") or "").suffix)
            elif item.get("array") is not None and item.get("sampling_rate"):
                file = _cache_array(item["array"], item["sampling_rate"])
            elif item.get("path"):
                file = _hf_path(base, item["path"])
        if file is None:
            problems.append(f"{here}: no audio (neither a path, bytes nor an array: {str(item)[:60]})")
            continue
        if not _is_file(file):
            problems.append(f"{here}: audio file {_shown(str(file))} not found")
            continue
        if ident in seen:
            problems.append(f'{here}: duplicate id "{_shown(ident)}" (first at {seen[ident]})')
            continue
        seen[ident] = here
        speaker = None if speaker is None or not str(speaker).strip() else str(speaker).strip()
        rows.append(_Row(here, str(file), Utterance(ident, file, normalise_transcript(text), speaker)))
    if not rows and not problems:
        problems.append(f"{where}: no utterances")
    return rows


def _hf_disk(value: Path | None, name: str, cfg: SpeechDataConfig, problems: list[str],
             as_test: bool = False) -> tuple[list[_Row], list[_Row] | None]:
    # the split rule: activelab.torchkit.hf; a separate test folder (as_test) gives its test split, else its pool
    hf = load_from_disk(value, None if as_test else cfg.split, field=FIELD, path_field=name)
    if as_test and hf.test is not None:
        return _hf_rows(hf.test, cfg, hf.test_where, hf.path, problems, hf.test_split), None
    pool = _hf_rows(hf.pool, cfg, hf.pool_where, hf.path, problems, hf.pool_split)
    if as_test or hf.test is None or cfg.test_path:
        return pool, None
    return pool, _hf_rows(hf.test, cfg, hf.test_where, hf.path, problems, hf.test_split)


_SPHINX_LINE = re.compile(r"^(.*)\(\s*([^()\s]+)\s*\)\s*$")
_SPHINX_TAG = re.compile(r"<[^>]*>")


def parse_sphinx_transcription(path: Path) -> list[tuple[str, str, int]]:
    """(fileid, text, line) for each line ``<s> TEXT </s> (fileid)`` or ``TEXT (fileid)`` of a sphinx
    transcription file; ``<s>``, ``</s>``, ``<sil>`` and other ``<...>`` tags are dropped."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        match = _SPHINX_LINE.match(line.strip())
        if match and (problem := transcript_problem(match.group(1))):
            raise UserError(f"{path}:{number}: transcript {match.group(1)[:60]!r}: {problem}")
        if match:
            out.append((match.group(2), normalise_transcript(_SPHINX_TAG.sub(" ", match.group(1))), number))
    return out


def _pocketsphinx(value: Path | None) -> list[_Row]:
    root = Path(value or POCKETSPHINX_DIR).expanduser()
    if not root.is_dir():
        if value:
            raise UserError(f"{FIELD}.path: {root}: folder not found")
        raise UserError("pocketsphinx-testdata is not installed: sudo apt-get install pocketsphinx-testdata")
    rows: list[_Row] = []
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and (p.name == "transcription" or p.suffix in (".transcription", ".lsn")))
    for file in files:
        for fileid, text, number in parse_sphinx_transcription(file):
            wav = file.parent / f"{fileid}.wav"
            if not wav.is_file() or not text:
                continue           # tidigits ships features (.mfc) only
            folder = file.parent.relative_to(root).as_posix()
            rows.append(_Row(f"{file}:{number}", str(wav),
                             Utterance(f"{folder}/{fileid}", Path(os.path.abspath(wav)), text, folder)))
    if not rows:
        raise UserError(f"{root}: no sphinx transcriptions with .wav recordings found")
    return rows


# ------------------------------------------------------------------------------------------ assembling
def _split(rows: list[_Row], cfg: SpeechDataConfig, rng: np.random.Generator) -> tuple[list[_Row], list[_Row]]:
    n = len(rows)
    if n < 2:
        raise UserError(f"{FIELD}.test_fraction: {n} utterance(s) cannot be split into a pool and a test set")
    target = min(max(int(round(cfg.test_fraction * n)), 1), n - 1)
    if not cfg.split_by_speaker:
        test = set(rng.permutation(n)[:target].tolist())
    else:
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.utt.speaker if row.utt.speaker is not None else f"\0{i}", []).append(i)
        if len(groups) < 2:
            raise UserError(f"{FIELD}.split_by_speaker: all {n} utterances are from one speaker "
                            f"({next(iter(groups))!r}); cannot hold out whole speakers")
        names = sorted(groups)
        test = set()
        for k in rng.permutation(len(names)):
            members = groups[names[int(k)]]
            if test and abs(len(test) + len(members) - target) > abs(len(test) - target):
                continue                      # this speaker would overshoot more than leaving it out
            if len(test) + len(members) > n - 1:
                continue
            test.update(members)
            if len(test) >= target:
                break
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def _rows_for(value: Path | None, name: str, cfg: SpeechDataConfig, problems: list[str],
              as_test: bool = False) -> tuple[list[_Row], list[_Row] | None]:
    if cfg.kind == "manifest":
        return _read_rows(_need_path(value, name, "manifest", folder=False), problems), None
    if cfg.kind == "audiofolder":
        pool, test = _audiofolder(_need_path(value, name, "audiofolder", folder=True), problems)
        return (pool + (test or []), None) if as_test else (pool, test)
    if cfg.kind == "hf_disk":
        return _hf_disk(value, name, cfg, problems, as_test)
    return _pocketsphinx(value), None


def _generate_if_asked(cfg: SpeechDataConfig) -> None:
    """``generate``: make the spoken-commands set in the manifest's folder when the manifests are not there (a
    progress line on stderr; atomic, see :func:`.synth.make_on_first_use`). A folder made by the generator
    with other settings than the recipe's is refused rather than used."""
    if cfg.generate is None:
        return
    from . import synth
    gen = cfg.generate
    folder = cfg.path.parent
    wanted = [cfg.path] + ([cfg.test_path] if cfg.test_path else [])
    settings = synth.make_settings(gen.utterances, gen.test_utterances, gen.seed)
    if all(p.is_file() for p in wanted):
        made = synth.read_settings(folder)
        if made is not None and made != settings:
            raise UserError(f"{FIELD}.generate: {folder} holds spoken commands made with {synth.describe(made)}, "
                            f"the recipe asks for {synth.describe(settings)}; delete the folder to make them again "
                            f"or change generate to match")
        return
    synth.make_on_first_use(folder, gen.utterances, gen.test_utterances, gen.seed)


def load_speech_data(cfg: SpeechDataConfig, seed: int) -> SpeechData:
    """Read the configured source (made first if ``generate`` asks for it), split off a test set when it has none
    (seeded), apply ``limit`` (seeded), and check every chosen audio file's header (and a floating-point file's
    samples); all problems are raised together as one :class:`ManifestError`."""
    _generate_if_asked(cfg)
    problems: list[str] = []
    pool, test = _rows_for(cfg.path, "path", cfg, problems)
    if cfg.test_path:
        test, _ = _rows_for(cfg.test_path, "test_path", cfg, problems, as_test=True)
    if problems:
        raise ManifestError(problems)
    if test is None:
        pool, test = _split(pool, cfg, rng_for(seed, "speech-split"))
    if cfg.limit is not None and cfg.limit < len(pool):
        keep = np.sort(rng_for(seed, "speech-limit").choice(len(pool), size=cfg.limit, replace=False))
        pool = [pool[int(i)] for i in keep]
    clash = {r.utt.id for r in pool} & {r.utt.id for r in test}
    if clash and cfg.test_path:
        problems.append(f"{FIELD}.test_path: {len(clash)} id(s) are in both the pool and the test set "
                        f"(e.g. {sorted(clash)[0]!r})")
    for row in pool + test:
        problem = audio_problem(row.utt.path, cfg.sample_rate, cfg.resample, cfg.max_seconds,
                                shown=f"{row.where}: {_shown(row.audio)}")
        if problem:
            problems.append(problem)
    if problems:
        raise ManifestError(problems)
    return SpeechData(pool=[r.utt for r in pool], test=[r.utt for r in test], sample_rate=cfg.sample_rate)
