"""Faults in speech data that used to pass silently: a CSV manifest with an unterminated quote, control characters
in transcripts, non-finite audio; the demo data made on first use; path-valued config fields; the pool fingerprint
the core compares on resume."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from pydantic import ValidationError

from activelab.cli import main
from activelab.errors import UserError
from activelab.plugins.speech import synth
from activelab.plugins.speech.data import (
    ManifestError,
    SpeechDataConfig,
    load_speech_data,
    parse_sphinx_transcription,
    read_audio,
    read_manifest,
    transcript_problem,
)
from activelab.plugins.speech.task import RecognitionConfig, RecognitionTask
from activelab.protocol import Env

needs_tools = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                 reason="espeak-ng and sox are not installed (sudo apt-get install espeak-ng sox)")


def tone(path: Path, seconds: float = 0.2, rate: int = 16000, subtype: str | None = None) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate, subtype=subtype)
    return path


def clips(folder: Path, n: int) -> list[str]:
    for i in range(n):
        tone(folder / f"{i}.wav", seconds=0.1 + 0.01 * i)
    return [f"{i}.wav" for i in range(n)]


def task_for(manifest: Path, **data) -> RecognitionTask:
    config = RecognitionConfig.model_validate({"data": {"path": str(manifest), **data}, "dim": 16, "layers": 1})
    return RecognitionTask(config, Env(seed=0, progress=False))


# ------------------------------------------------------------------------------------------ CSV quoting
def _csv(folder: Path, bad_line: int | None, bad_row: str = '"go left') -> Path:
    """A 32-utterance CSV manifest (header on line 1); line ``bad_line`` is replaced by ``audio,bad_row``."""
    names = clips(folder, 32)
    lines = ["audio,text,speaker"] + [f"{name},word {i} again,s{i % 3}" for i, name in enumerate(names)]
    if bad_line is not None:
        lines[bad_line - 1] = f"{names[bad_line - 2]},{bad_row}"
    manifest = folder / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_a_valid_csv_manifest_reads_every_row(tmp_path):
    manifest = _csv(tmp_path, None)
    utts = read_manifest(manifest)
    assert len(utts) == 32 and utts[5].transcript == "word 5 again" and utts[31].speaker == "s1"
    manifest.write_text('audio,text\n0.wav,"say ""hi"", then go"\r\n1.wav,plain\r\n')   # escaped quotes, CRLF
    assert [u.transcript for u in read_manifest(manifest)] == ['say "hi", then go', "plain"]


CSV_FAULTS = {   # name: (the bad field, the phrase the message holds)
    # the quote never closes: it used to swallow the other 28 rows into one transcript (pool 32 -> 3)
    "to_the_end": ('"go left', "unterminated quote: the quoted field that starts on this line runs to the end"),
    # it closes at a later line's opening quote, followed by text
    "closed_later_by_text": ('"go left,s1\n0.wav,"x y, z",s1',
                             "unterminated quote? the quoted field that starts on this line runs on to line 5"),
    # it closes at a later line's quote and the record parses: still a field running over lines
    "closed_later_cleanly": ('"go left\n0.wav,stop",s2', "unterminated quote? a quoted field runs over lines 4-5"),
    "text_after_a_closing_quote": ('"go" left,s1', "malformed CSV (',' expected after '\"')"),
}


@pytest.mark.parametrize("case", sorted(CSV_FAULTS))
def test_a_csv_quote_fault_is_refused_naming_the_file_and_line(tmp_path, case):
    bad, phrase = CSV_FAULTS[case]
    manifest = _csv(tmp_path, 4, bad)
    with pytest.raises(ManifestError) as info:
        load_speech_data(SpeechDataConfig(path=str(manifest)), seed=0)
    message = str(info.value)
    assert message.startswith(f"{manifest}:4: ") and phrase in message, message
    assert "\n" not in message


def test_an_unterminated_quote_exits_2_on_one_line(tmp_path, capsys):
    manifest = _csv(tmp_path, 9)
    recipe = {"name": "bad-csv", "task": {"plugin": "speech", "name": "recognition",
                                          "params": {"data": {"path": str(manifest)}, "dim": 16, "layers": 1}},
              "scorer": {"name": "random"}, "loop": {"rounds": 1, "initial": 2, "batch": 1}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"{manifest}:9: unterminated quote" in err[0], err


# ------------------------------------------------------------------------------------------ control characters
CONTROL = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9b"]


@pytest.mark.parametrize("char", CONTROL)
def test_a_transcript_with_a_control_character_is_refused_by_the_readers(tmp_path, char):
    names = clips(tmp_path, 4)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"audio": n, "text": f"go {i}" if i != 2 else f"go{char}left"}) + "\n"
                             for i, n in enumerate(names)))
    with pytest.raises(ManifestError) as info:
        read_manifest(jsonl)
    assert str(info.value).startswith(f'{jsonl}:3: "text" ') and f"U+{ord(char):04X}" in str(info.value)
    csv_file = tmp_path / "m.csv"
    csv_file.write_text("audio,text\n" + "".join(f"{n},go{char if i == 1 else ''} {i}\n" for i, n in enumerate(names)))
    with pytest.raises(ManifestError, match=rf"^{csv_file}:3: .*control character \(U\+{ord(char):04X}\)"):
        read_manifest(csv_file)


def test_the_readers_and_the_label_check_share_one_rule(tmp_path):
    """Whatever a reader accepts the task accepts as a label, and the reverse, for every control character."""
    names = clips(tmp_path, 4)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio": n, "text": f"go {i}"}) + "\n" for i, n in enumerate(names)))
    task = task_for(manifest)
    item = task.pool_ids()[0]
    for code in [*range(0x20), *range(0x7f, 0xa0)]:
        text = f"go{chr(code)}left"
        manifest.write_text(json.dumps({"audio": names[0], "text": text}) + "\n")
        try:
            read_manifest(manifest)
            reader_ok = True
        except ManifestError:
            reader_ok = False
        try:
            task.check_label(item, text)
            label_ok = True
        except ValueError:
            label_ok = False
        assert reader_ok == label_ok == (transcript_problem(text) is None) == (chr(code) in "\t\n\r"), hex(code)


def test_control_characters_in_a_dataset_and_in_sphinx_transcriptions(tmp_path, monkeypatch):
    sphinx = tmp_path / "a.transcription"
    sphinx.write_text("<s> ten of clubs </s> (001)\n<s> go\x1b left </s> (002)\n")
    with pytest.raises(UserError, match=rf"^{sphinx}:2: .*U\+001B"):
        parse_sphinx_transcription(sphinx)
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("ACTIVELAB_AUDIO_CACHE", str(tmp_path / "cache"))
    names = clips(tmp_path, 4)
    texts = ["go", "stop", "left\x07", "right"]
    datasets.Dataset.from_dict({"audio": [str(tmp_path / n) for n in names], "text": texts}).save_to_disk(
        str(tmp_path / "hf"))
    with pytest.raises(ManifestError, match=r"hf row 2: transcript 'left\\x07': .*U\+0007"):
        load_speech_data(SpeechDataConfig(kind="hf_disk", path=str(tmp_path / "hf")), seed=0)


# ------------------------------------------------------------------------------------------ non-finite audio
@pytest.mark.parametrize("bad", ["all_nan", "one_inf"])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_audio_with_non_finite_samples_is_refused_naming_the_file(tmp_path, bad, subtype):
    names = clips(tmp_path, 4)
    wave = np.full(1600, np.nan) if bad == "all_nan" else np.where(np.arange(1600) == 800, np.inf, 0.1)
    sf.write(tmp_path / "bad.wav", wave, 16000, subtype=subtype)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio": n, "text": "go"}) + "\n" for n in [*names, "bad.wav"]))
    with pytest.raises(ManifestError) as info:
        load_speech_data(SpeechDataConfig(path=str(manifest)), seed=0)
    count = 1600 if bad == "all_nan" else 1
    assert str(info.value) == f"{manifest}:5: bad.wav: {count} of 1600 samples are not finite (NaN or infinity)"
    with pytest.raises(UserError, match=rf"^{tmp_path / 'bad.wav'}: {count} of 1600 samples are not finite"):
        read_audio(tmp_path / "bad.wav", 16000)


def test_finite_float_audio_still_loads(tmp_path):
    tone(tmp_path / "f.wav", subtype="FLOAT")
    tone(tmp_path / "g.wav", subtype="PCM_16")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio": n, "text": "go"}) + "\n" for n in ("f.wav", "g.wav")))
    data = load_speech_data(SpeechDataConfig(path=str(manifest), test_fraction=0.5), seed=0)
    assert len(data.pool) == len(data.test) == 1


# ------------------------------------------------------------------------------------------ demo data on first use
@needs_tools
def test_the_demo_data_is_made_on_first_use_and_reused(tmp_path, capsys):
    folder = tmp_path / "data" / "spoken_commands"
    generate = {"utterances": 3, "test_utterances": 2, "seed": 1}
    task = task_for(folder / "train.jsonl", test_path=str(folder / "test.jsonl"), generate=generate)
    assert (len(task.pool), len(task.test)) == (3, 2)
    err = capsys.readouterr().err
    assert f"making the spoken-commands data in {folder}" in err and f"made {folder} in" in err
    assert json.loads((folder / "synth.json").read_text())["utterances"] == 3
    assert os.listdir(folder.parent) == ["spoken_commands"]          # no temporary folder left beside it
    made = {p.name: p.stat().st_mtime_ns for p in (folder / "wav").iterdir()}
    again = task_for(folder / "train.jsonl", test_path=str(folder / "test.jsonl"), generate=generate)
    assert [u.transcript for u in again.pool] == [u.transcript for u in task.pool]
    assert capsys.readouterr().err == "" and {p.name: p.stat().st_mtime_ns for p in (folder / "wav").iterdir()} == made
    # a recipe asking for another set than the folder holds is refused, not silently given the old one
    with pytest.raises(UserError, match=r"generate: .* made with utterances 3.*asks for utterances 4"):
        task_for(folder / "train.jsonl", generate={**generate, "utterances": 4})


@needs_tools
def test_an_interrupted_generation_leaves_no_folder_that_looks_complete(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "spoken_commands"
    real = synth.make_spoken_commands

    def killed(out_dir, *args):
        real(out_dir, *args)
        raise KeyboardInterrupt                   # stopped after writing everything but before the rename

    monkeypatch.setattr(synth, "make_spoken_commands", killed)
    cfg = SpeechDataConfig(path=folder / "train.jsonl", generate={"utterances": 2, "test_utterances": 1})
    with pytest.raises(KeyboardInterrupt):
        load_speech_data(cfg, seed=0)
    assert os.listdir(tmp_path) == []
    # a folder left by a process that was killed outright (SIGKILL: no cleanup) is deleted by the next one
    dead = tmp_path / f".spoken_commands.partial.{synth.socket.gethostname()}.999999999.abc"
    (dead / "wav").mkdir(parents=True)
    monkeypatch.setattr(synth, "make_spoken_commands", real)
    data = load_speech_data(cfg, seed=0)
    assert len(data.pool) + len(data.test) == 2 and os.listdir(tmp_path) == ["spoken_commands"]


def test_a_half_made_folder_is_refused_not_used(tmp_path):
    folder = tmp_path / "spoken_commands"
    (folder / "wav").mkdir(parents=True)
    (folder / "wav" / "00000.wav").write_bytes(b"")
    cfg = SpeechDataConfig(path=folder / "train.jsonl", generate={"utterances": 2, "test_utterances": 1})
    with pytest.raises(UserError, match=rf"^{folder}: exists but does not hold the complete spoken-commands set"):
        load_speech_data(cfg, seed=0)


def test_a_missing_demo_manifest_names_the_command_that_makes_it(tmp_path):
    demo = tmp_path / "data" / "spoken_commands" / "train.jsonl"
    with pytest.raises(UserError) as info:
        load_speech_data(SpeechDataConfig(path=demo), seed=0)
    assert str(info.value) == (
        f"task.params.data.path: {demo}: file not found; the spoken-commands demo data is made by `python -m "
        f"activelab.plugins.speech.synth {demo.parent} --utterances 1200 --test-utterances 200`, or on first use "
        f"with task.params.data.generate: {{utterances: 1200, test_utterances: 200}}")
    other = tmp_path / "mine" / "train.jsonl"
    with pytest.raises(UserError) as info:
        load_speech_data(SpeechDataConfig(path=other), seed=0)
    assert str(info.value) == f"task.params.data.path: {other}: file not found"


def test_the_demo_recipes_generate_the_documented_set():
    root = Path(__file__).resolve().parents[3]
    for recipe in sorted((root / "recipes").glob("*_asr.yaml")):
        data = yaml.safe_load(recipe.read_text())["task"]["params"]["data"]
        assert data["generate"] == {"utterances": 1200, "test_utterances": 200}, recipe
        cfg = SpeechDataConfig.model_validate(data)
        assert (cfg.path.parent, cfg.generate.seed) == (Path("data/spoken_commands"), 0)


@pytest.mark.parametrize("data, phrase", [
    ({"path": "d/m.jsonl"}, "path must name its train.jsonl"),
    ({"path": "d/train.jsonl", "test_path": "e/test.jsonl"}, "test_path must be that file or left out"),
    ({"kind": "audiofolder", "path": "d/train.jsonl"}, "only for kind manifest"),
])
def test_generate_is_validated_with_the_recipe(tmp_path, capsys, data, phrase):
    recipe = {"name": "gen", "task": {"plugin": "speech", "name": "recognition",
                                      "params": {"data": {**data,
                                                          "generate": {"utterances": 2, "test_utterances": 1}}}},
              "scorer": {"name": "random"}, "loop": {"rounds": 1, "initial": 2, "batch": 1}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "task.params.data.generate: " in err and phrase in err, err


# ------------------------------------------------------------------------------------------ paths
def test_path_fields_are_paths_and_an_empty_one_is_refused(tmp_path):
    cfg = SpeechDataConfig(path="~/a/train.jsonl", test_path=str(tmp_path / "t.jsonl"))
    assert cfg.path == Path.home() / "a" / "train.jsonl" and cfg.test_path == tmp_path / "t.jsonl"
    assert cfg.model_dump(mode="json")["test_path"] == str(tmp_path / "t.jsonl")
    for empty in ("", "  "):
        with pytest.raises(ValidationError, match="must be a path, not an empty string"):  # Path("") is the cwd
            SpeechDataConfig(kind="audiofolder", path=empty)


# ------------------------------------------------------------------------------------------ fingerprint
def test_the_data_fingerprint_is_stable_and_follows_transcripts_and_audio(tmp_path):
    names = clips(tmp_path, 6)
    manifest = tmp_path / "m.jsonl"

    def write(texts):
        manifest.write_text("".join(json.dumps({"audio": n, "text": t}) + "\n" for n, t in zip(names, texts)))

    texts = [f"word {i}" for i in range(6)]
    write(texts)
    first = task_for(manifest).data_fingerprint()
    assert len(first) == 64 and int(first, 16) >= 0
    assert task_for(manifest).data_fingerprint() == first                    # stable across loads
    write(texts[:3] + ["word three"] + texts[4:])
    assert task_for(manifest).data_fingerprint() != first                    # one transcript changed
    write(texts)
    assert task_for(manifest).data_fingerprint() == first
    tone(tmp_path / names[4], seconds=0.3)                                   # one recording changed
    assert task_for(manifest).data_fingerprint() != first


def test_a_line_separator_inside_a_jsonl_transcript_is_text_not_a_line_break(tmp_path):
    """JSON allows a raw U+2028 in a string; the reader used to split the record there (str.splitlines) and
    refuse a valid manifest as "not valid JSON"."""
    names = clips(tmp_path, 2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": names[0], "text": "go\u2028left"}, ensure_ascii=False) + "\n"
                        + json.dumps({"audio": names[1], "text": "stop"}) + "\r\n", encoding="utf-8")
    assert [u.transcript for u in read_manifest(manifest)] == ["go left", "stop"]
    manifest.write_text(json.dumps({"audio": names[0], "text": "go\u2028left"}, ensure_ascii=False) + "\n{oops\n")
    with pytest.raises(ManifestError, match=rf"^{manifest}:2: not valid JSON"):
        read_manifest(manifest)
