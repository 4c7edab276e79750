"""The speech plugin's data layer: manifests, audio files, Hugging Face datasets, the pocketsphinx recordings and
the generated spoken commands."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from activelab.errors import UserError
from activelab.plugins.speech import synth
from activelab.plugins.speech.data import (
    ManifestError,
    SpeechDataConfig,
    Utterance,
    load_speech_data,
    normalise_transcript,
    read_audio,
    read_manifest,
)

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
needs_tools = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                 reason="espeak-ng and sox are not installed (sudo apt-get install espeak-ng sox)")


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> Path:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are not installed (sudo apt-get install espeak-ng sox)")
    return synth.make_spoken_commands(tmp_path_factory.mktemp("commands"), utterances=12, test_utterances=6, seed=3)


def tone(path: Path, seconds: float = 0.25, rate: int = 16000, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate)
    return path


# ------------------------------------------------------------------------------------------ generated commands
def test_synth_output_reads_back(commands):
    train, test = read_manifest(commands / "train.jsonl"), read_manifest(commands / "test.jsonl")
    assert len(train) == 12 and len(test) == 6
    assert not {u.id for u in train} & {u.id for u in test}
    for utt in train + test:
        words = utt.transcript.split()
        assert 2 <= len(words) <= 4 and set(words) <= set(synth.VOCABULARY), utt
        assert "+" in utt.speaker and utt.path.is_absolute()
        info = sf.info(str(utt.path))
        assert (info.samplerate, info.channels) == (16000, 1) and info.frames > 1600
    wave = read_audio(train[0].path, 16000)
    assert wave.ndim == 1 and wave.dtype.is_floating_point and float(wave.abs().max()) > 0.1
    data = load_speech_data(SpeechDataConfig(path=str(commands / "train.jsonl"),
                                             test_path=str(commands / "test.jsonl")), seed=0)
    assert (len(data.pool), len(data.test), data.sample_rate) == (12, 6, 16000)
    assert json.loads((commands / "synth.json").read_text())["utterances"] == 12


def test_synth_is_idempotent_and_deterministic(commands, capsys):
    stamps = {p.name: p.stat().st_mtime_ns for p in (commands / "wav").iterdir()}
    assert synth.main([str(commands), "--utterances", "12", "--test-utterances", "6", "--seed", "3"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (commands / "wav").iterdir()} == stamps
    assert synth.make_spec(3, "train", 5, 5) == synth.make_spec(3, "train", 5, 5)
    texts = [synth.make_spec(3, "test", i, i).text for i in range(6)]
    assert [u.transcript for u in read_manifest(commands / "test.jsonl")] == texts
    assert texts != [synth.make_spec(3, "train", i, i).text for i in range(6)]   # its own stream


def test_synth_without_tools_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    assert synth.main([str(tmp_path / "out"), "--utterances", "2", "--test-utterances", "1"]) == 2
    err = capsys.readouterr().err
    assert "sudo apt-get install espeak-ng sox" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ audio
def test_read_audio_resamples_and_averages_channels(tmp_path):
    path = tone(tmp_path / "low.wav", seconds=0.5, rate=8000, channels=2)
    wave = read_audio(path, 16000)
    assert wave.shape == (8000,) and str(wave.dtype) == "torch.float32"
    assert abs(float(wave.abs().max()) - 0.3) < 0.03
    with pytest.raises(UserError, match=r"sample rate 8000 Hz, expected 16000 \(set resample: true"):
        read_audio(path, 16000, resample=False)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "low.wav", "text": "A tone"}) + "\n"
                                      + json.dumps({"audio": "ok.wav", "text": "b"}) + "\n")
    tone(tmp_path / "ok.wav")
    cfg = SpeechDataConfig(path=str(tmp_path / "m.jsonl"), resample=False)   # 1 pool + 1 test utterance
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: low\.wav: sample rate 8000 Hz, expected 16000"):
        load_speech_data(cfg, seed=0)
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: ok\.wav: 0\.25 s long, more than max_seconds 0\.1"):
        load_speech_data(cfg.model_copy(update={"resample": True, "max_seconds": 0.1}), seed=0)


# ------------------------------------------------------------------------------------------ manifests
def _jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


GOOD = {"audio": "a.wav", "text": "go left"}
BAD_MANIFESTS = {   # name: (manifest file, contents, the expected line, a phrase of the message)
    "bad_json": ("m.jsonl", _jsonl(GOOD, "", '{"audio": "a.wav" "text": "x"}'), 3,
                 "not valid JSON (Expecting ',' delimiter)"),
    "missing_text": ("m.jsonl", _jsonl(GOOD, {"audio": "a.wav", "id": "2"}), 2, 'missing "text"'),
    "missing_file": ("m.csv", "audio,text\na.wav,go\n\nclips/nope.wav,stop\n", 4,
                     "audio file clips/nope.wav not found"),
    "empty_text": ("m.jsonl", _jsonl({"audio": "a.wav", "transcript": "  \t "}), 1, "empty transcript"),
    "csv_column": ("m.csv", "audio,words\na.wav,go\n", 1, 'no "text" column'),
    "duplicate_id": ("m.jsonl", _jsonl({**GOOD, "id": "x"}, {**GOOD, "id": "x"}), 2, 'duplicate id "x" (first at'),
    "duplicate_path": ("m.jsonl", _jsonl(GOOD, GOOD), 2, 'duplicate id "a.wav"'),
    "unreadable": ("m.jsonl", _jsonl(GOOD, {"audio": "x.wav", "text": "no"}), 2, "x.wav: unreadable audio (soundfile:"),
    "empty_audio": ("m.jsonl", _jsonl({"audio": "e.wav", "text": "no"}, GOOD), 1, "e.wav: empty audio (0 samples)"),
    "not_object": ("m.jsonl", _jsonl(GOOD, "[1, 2]"), 2, "not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_names_file_and_line(tmp_path, case):
    name, text, line, phrase = BAD_MANIFESTS[case]
    tone(tmp_path / "a.wav")
    (tmp_path / "x.wav").write_bytes(b"RIFF this is not audio at all" * 10)
    sf.write(tmp_path / "e.wav", np.zeros(0, dtype=np.float32), 16000)
    manifest = tmp_path / name
    manifest.write_text(text)
    with pytest.raises(ManifestError) as info:
        load_speech_data(SpeechDataConfig(path=str(manifest)), seed=0)
    message = str(info.value)
    assert message.startswith(f"{manifest}:{line}: ") and phrase in message, message
    assert "\n" not in message and message == info.value.problems[0]
    assert isinstance(info.value, UserError)


def test_all_problems_are_collected(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(_jsonl({"audio": "a.wav"}, "{oops", {"audio": "b.wav", "text": "hi"}, {"text": "x"}))
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert len(info.value.problems) == 4
    assert str(info.value) == f'{manifest}:1: missing "text" (also accepted: "transcript", "transcription", ' \
                              f'"sentence") (and 3 more problems)'
    assert info.value.problems[2] == f"{manifest}:3: audio file b.wav not found"
    manifest.write_text("\n\n")
    with pytest.raises(ManifestError, match="m.jsonl: no utterances"):
        read_manifest(manifest)


def test_csv_manifest_ids_speakers_and_paths(tmp_path):
    (tmp_path / "clips").mkdir()
    tone(tmp_path / "clips" / "a.wav")
    tone(tmp_path / "b.wav")
    (tmp_path / "data").mkdir()
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text(f'path,transcript,speaker,id,extra\n../clips/a.wav,"Go,   LEFT  ",ann,,1\n'
                        f'{tmp_path / "b.wav"},Stop,,b1,2\n')
    a, b = read_manifest(manifest)
    assert a == Utterance("../clips/a.wav", (tmp_path / "clips" / "a.wav").resolve(), "go, left", "ann")
    assert (b.id, b.path, b.transcript, b.speaker) == ("b1", tmp_path / "b.wav", "stop", None)
    assert normalise_transcript("  Hello\n  WORLD\t") == "hello world"


def test_audiofolder_metadata_csv(tmp_path):
    folder = tmp_path / "af"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        tone(folder / "sub" / f"{i}.wav")
    (folder / "metadata.csv").write_text("file_name,transcription\n"
                                         + "".join(f"sub/{i}.wav,Word {i}\n" for i in range(5)))
    data = load_speech_data(SpeechDataConfig(kind="audiofolder", path=str(folder)), seed=1)
    assert (len(data.pool), len(data.test)) == (4, 1)
    every = sorted(data.pool + data.test, key=lambda u: u.id)
    assert [u.transcript for u in every] == [f"word {i}" for i in range(5)]
    assert every[0].id == "sub/0.wav" and every[0].path == folder / "sub" / "0.wav"


def test_hf_dataset_saved_to_disk(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("ACTIVELAB_AUDIO_CACHE", str(tmp_path / "cache"))
    paths = [str(tone(tmp_path / f"{i}.wav", seconds=0.1 + 0.05 * i)) for i in range(6)]
    rows = {"audio": paths, "text": [f"Say {i}" for i in range(6)], "speaker": ["a", "b"] * 3}
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict(train=ds.select(range(4)), test=ds.select(range(4, 6))).save_to_disk(str(tmp_path / "hf"))
    for p in paths:
        os.remove(p)                              # save_to_disk embedded the bytes: read from the cache
    data = load_speech_data(SpeechDataConfig(kind="hf_disk", path=str(tmp_path / "hf")), seed=0)
    assert [u.transcript for u in data.pool] == ["say 0", "say 1", "say 2", "say 3"]
    assert [u.transcript for u in data.test] == ["say 4", "say 5"]
    assert data.pool[1].id == "1.wav" and data.pool[1].speaker == "b"
    assert data.pool[2].path.parent == tmp_path / "cache"
    assert read_audio(data.test[1].path, 16000).shape == (int(0.35 * 16000),)
    again = load_speech_data(SpeechDataConfig(kind="hf_disk", path=str(tmp_path / "hf")), seed=0)
    assert again == data and len(list((tmp_path / "cache").iterdir())) == 6
    with pytest.raises(UserError,
                       match=r"text_column: column 'sentence' not in .*; available columns: audio, text, speaker"):
        load_speech_data(SpeechDataConfig(kind="hf_disk", path=str(tmp_path / "hf"), text_column="sentence"), seed=0)


# ------------------------------------------------------------------------------------------ real recordings
def test_pocketsphinx_recordings():
    if not POCKETSPHINX.is_dir():
        pytest.skip(f"{POCKETSPHINX} is absent (sudo apt-get install pocketsphinx-testdata)")
    data = load_speech_data(SpeechDataConfig(kind="pocketsphinx"), seed=0)
    every = {u.id: u for u in data.pool + data.test}
    assert len(every) >= 8 and len(data.test) >= 1
    assert every["cards/001"].transcript == "ten of clubs"
    assert (every["librivox/sense_and_sensibility_01_austen_64kb-0880"].transcript
            == "he was not an ill disposed young man")
    for utt in list(every.values())[:4]:
        wave = read_audio(utt.path, 16000)
        assert wave.ndim == 1 and wave.numel() > 16000 * 0.5 and float(wave.abs().max()) > 0.01


def test_pocketsphinx_missing_says_what_to_install(monkeypatch):
    from activelab.plugins.speech import data as speech_data
    monkeypatch.setattr(speech_data, "POCKETSPHINX_DIR", "/nonexistent/pocketsphinx")
    with pytest.raises(UserError,
                       match=r"^pocketsphinx-testdata is not installed: sudo apt-get install pocketsphinx-testdata$"):
        load_speech_data(SpeechDataConfig(kind="pocketsphinx"), seed=0)


# ------------------------------------------------------------------------------------------ splits
@pytest.fixture
def speakers_manifest(tmp_path) -> Path:
    tone(tmp_path / "a.wav", seconds=0.05)
    lines = [{"id": f"u{i}", "audio": "a.wav", "text": f"w {i}", "speaker": f"s{i % 7}"} for i in range(40)]
    (tmp_path / "m.jsonl").write_text(_jsonl(*lines))
    return tmp_path / "m.jsonl"


def test_seeded_split_is_deterministic_and_disjoint(speakers_manifest):
    cfg = SpeechDataConfig(path=str(speakers_manifest), test_fraction=0.25)
    first, again, other = (load_speech_data(cfg, seed) for seed in (4, 4, 5))
    assert first == again and first.test != other.test
    pool, test = {u.id for u in first.pool}, {u.id for u in first.test}
    assert len(test) == 10 and len(pool) == 30 and not pool & test
    limited = load_speech_data(cfg.model_copy(update={"limit": 7}), seed=4)
    assert len(limited.pool) == 7 and {u.id for u in limited.pool} <= pool and limited.test == first.test


def test_split_by_speaker_holds_out_whole_speakers(speakers_manifest):
    cfg = SpeechDataConfig(path=str(speakers_manifest), test_fraction=0.3, split_by_speaker=True)
    for seed in range(5):
        data = load_speech_data(cfg, seed)
        pool, test = {u.speaker for u in data.pool}, {u.speaker for u in data.test}
        assert pool and test and not pool & test and len(data.pool) + len(data.test) == 40
        assert 6 <= len(data.test) <= 18
    assert load_speech_data(cfg, 2) == load_speech_data(cfg, 2)
