"""Spoken commands, generated on this machine (no downloads): the speech recognition demo's data.

    python -m activelab.plugins.speech.synth OUT_DIR [--utterances 500] [--test-utterances 150] [--seed 0]

Each phrase is 2-4 words from a 36-word vocabulary (digits ``zero``..``nine``, six colours, ``up down left
right``, ``go stop yes no on off``, ``open close turn move`` and six short nouns), mostly from small templates
("open red door", "turn light off", "left five", "three nine two") and a quarter free word sequences, so a small
character-CTC model can learn it from a few hundred utterances but not trivially. espeak-ng speaks it with one of
eight English accents and a voice variant (the ``speaker`` is ``voice+variant``, e.g. ``en-us+f3``), at a random
rate, pitch, amplitude and word gap; sox converts it to 16 kHz mono with a small tempo and pitch perturbation and
some silence around it; then white noise is mixed in at 20-35 dB SNR. About a quarter of the utterances are hard:
fast speech (200-260 words per minute), the less common accents or the klatt/croak variants, and 8-15 dB SNR.

Writes ``OUT_DIR/train.jsonl`` and ``OUT_DIR/test.jsonl`` (the manifest format of :mod:`.data`: ``id``,
``audio`` as ``wav/00012.wav``, ``text``, ``speaker``, plus ``hard`` and ``seconds``, which readers ignore), the
16-bit WAV files in ``OUT_DIR/wav/`` and, last, ``OUT_DIR/synth.json`` with the arguments. Every choice comes from
a random stream of (seed, split, utterance number), and espeak-ng and sox (``-R``) are deterministic, so the same
arguments give the same files; the test phrases come from their own stream, so many are word combinations the
training set never has. Run again with the same arguments on a complete folder: "up to date". The espeak-ng and
sox calls run in a pool of 2 threads.

A speech recipe can instead ask for the set on first use (``task.params.data.generate``): then
:func:`make_on_first_use` writes it into a temporary folder beside the target and renames that into place, so a
run killed mid-way never leaves a folder that looks complete.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activelab.errors import UserError
from activelab.protocol import rng_for

VERSION = 1
SAMPLE_RATE = 16000
INSTALL = "espeak-ng and sox are needed to make the spoken-commands data: sudo apt-get install espeak-ng sox"
DEMO_UTTERANCES, DEMO_TEST_UTTERANCES = 1200, 200   # the speech demo's set (recipes/*_asr.yaml, README)

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
MOVES = ["up", "down", "left", "right"]
COMMANDS = ["go", "stop", "yes", "no", "on", "off"]
VERBS = ["open", "close", "turn", "move"]
NOUNS = ["door", "light", "box", "cat", "dog", "house"]
VOCABULARY = DIGITS + COLOURS + MOVES + COMMANDS + VERBS + NOUNS

TEMPLATES = [                                   # (weight, slots); a slot is a word list
    (3, [DIGITS, DIGITS]), (3, [DIGITS, DIGITS, DIGITS]), (2, [DIGITS, DIGITS, DIGITS, DIGITS]),
    (3, [["open", "close"], COLOURS, NOUNS]),
    (2, [["turn"], NOUNS, ["on", "off"]]),
    (2, [["turn", "move"], MOVES, DIGITS]),
    (3, [MOVES + ["go", "stop"], DIGITS]),
    (2, [COLOURS, NOUNS, MOVES]),
    (2, [["yes", "no"], ["go", "stop"], DIGITS]),
    (2, [["move"], COLOURS, NOUNS, MOVES]),
]
FREE_SHARE = 0.25                               # phrases of 2-4 words drawn freely from the whole vocabulary

EASY_VOICES = ["en-us", "en", "en-gb-x-rp", "en-us-nyc"]
HARD_VOICES = ["en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
EASY_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
HARD_VARIANTS = ["klatt", "klatt2", "klatt3", "croak", "m8", "f5"]
HARD_SHARE = 0.25


@dataclass(frozen=True)
class Spec:
    """Everything that decides one utterance's audio."""

    number: int
    text: str
    voice: str
    variant: str
    speed: int          # espeak words per minute
    pitch: int          # espeak 0..99
    amplitude: int      # espeak 0..200
    gap: int            # espeak pause between words, 10 ms units
    tempo: float        # sox tempo factor
    cents: int          # sox pitch shift
    pad: tuple[float, float]
    level: float        # peak level before noise
    snr_db: float
    hard: bool

    @property
    def speaker(self) -> str:
        return f"{self.voice}+{self.variant}"


def make_phrase(rng: np.random.Generator) -> str:
    if rng.random() < FREE_SHARE:
        n = int(rng.integers(2, 5))
        return " ".join(VOCABULARY[int(i)] for i in rng.integers(0, len(VOCABULARY), size=n))
    weights = np.array([w for w, _ in TEMPLATES], dtype=float)
    slots = TEMPLATES[int(rng.choice(len(TEMPLATES), p=weights / weights.sum()))][1]
    return " ".join(slot[int(rng.integers(len(slot)))] for slot in slots)


def make_spec(seed: int, split: str, index: int, number: int) -> Spec:
    rng = rng_for(seed, "speech-synth", split, index)
    text = make_phrase(rng)
    hard = bool(rng.random() < HARD_SHARE)
    pick = lambda options: options[int(rng.integers(len(options)))]   # noqa: E731
    if hard:
        how = int(rng.integers(3))          # every hard one is fast; plus an odd accent, an odd variant or both
        voice = pick(HARD_VOICES) if how != 1 else pick(EASY_VOICES)
        variant = pick(HARD_VARIANTS) if how != 0 else pick(EASY_VARIANTS)
        speed, snr = int(rng.integers(200, 261)), float(rng.uniform(8, 15))
        tempo, cents = float(rng.uniform(0.85, 1.2)), int(rng.integers(-200, 201))
    else:
        voice, variant = pick(EASY_VOICES + HARD_VOICES[:2]), pick(EASY_VARIANTS)
        speed, snr = int(rng.integers(120, 201)), float(rng.uniform(20, 35))
        tempo, cents = float(rng.uniform(0.92, 1.08)), int(rng.integers(-80, 81))
    return Spec(number=number, text=text, voice=voice, variant=variant, speed=speed,
                pitch=int(rng.integers(20, 81)), amplitude=int(rng.integers(60, 161)), gap=int(rng.integers(0, 6)),
                tempo=round(tempo, 3), cents=cents,
                pad=(round(float(rng.uniform(0.05, 0.3)), 3), round(float(rng.uniform(0.05, 0.3)), 3)),
                level=round(float(rng.uniform(0.3, 0.9)), 3), snr_db=round(snr, 2), hard=hard)


def _run(cmd: list[str], data: bytes | None = None) -> bytes:
    done = subprocess.run(cmd, input=data, capture_output=True, check=False)
    if done.returncode != 0:
        err = " ".join(done.stderr.decode(errors="replace").split())[:200]
        raise UserError(f"{cmd[0]} failed (exit {done.returncode}): {err}")
    return done.stdout


def synthesise(spec: Spec, seed: int, split: str) -> np.ndarray:
    """The utterance as float32 samples at 16 kHz in [-1, 1]."""
    speech = _run(["espeak-ng", "-v", spec.speaker, "-s", str(spec.speed), "-p", str(spec.pitch),
                   "-a", str(spec.amplitude), "-g", str(spec.gap), "--stdout", spec.text])
    raw = _run(["sox", "-R", "-V1", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1",
                "-e", "floating-point", "-b", "32", "-", "gain", "-6", "tempo", "-s", str(spec.tempo),
                "pitch", str(spec.cents), "pad", str(spec.pad[0]), str(spec.pad[1])], speech)
    wave = np.frombuffer(raw, dtype=np.float32).astype(np.float64)
    if wave.size == 0 or not np.any(wave):
        raise UserError(f"espeak-ng produced no audio for {spec.text!r} with voice {spec.speaker}")
    wave *= spec.level / np.abs(wave).max()
    voiced = wave[np.abs(wave) > 0.02 * spec.level]
    power = float(np.mean(voiced ** 2)) if voiced.size else float(np.mean(wave ** 2))
    noise = rng_for(seed, "speech-synth-noise", split, spec.number).standard_normal(wave.size)
    wave = wave + noise * np.sqrt(power / 10 ** (spec.snr_db / 10))
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def make_settings(utterances: int, test_utterances: int, seed: int) -> dict:
    if utterances < 1 or test_utterances < 1:
        raise UserError(f"--utterances and --test-utterances must be >= 1 (got {utterances}, {test_utterances})")
    return {"generator": "spoken_commands", "version": VERSION, "utterances": int(utterances),
            "test_utterances": int(test_utterances), "seed": int(seed), "sample_rate": SAMPLE_RATE}


def read_settings(out_dir: Path) -> dict | None:
    """The settings a complete set in ``out_dir`` was made with (its ``synth.json``), or None when there is none."""
    try:
        made = json.loads((Path(out_dir) / "synth.json").read_text())
    except (OSError, ValueError):
        return None
    return made if isinstance(made, dict) and made.get("generator") == "spoken_commands" else None


def describe(settings: dict) -> str:
    return ", ".join(f"{k} {settings.get(k)}" for k in ("utterances", "test_utterances", "seed", "version"))


def command(out_dir: Path | str, utterances: int, test_utterances: int, seed: int = 0) -> str:
    """The shell command that makes this set."""
    return (f"python -m activelab.plugins.speech.synth {out_dir} --utterances {utterances} "
            f"--test-utterances {test_utterances}" + (f" --seed {seed}" if seed else ""))


def is_up_to_date(out_dir: Path, settings: dict) -> bool:
    try:
        if json.loads((out_dir / "synth.json").read_text()) != settings:
            return False
        for name, n in (("train.jsonl", settings["utterances"]), ("test.jsonl", settings["test_utterances"])):
            lines = [json.loads(line) for line in (out_dir / name).read_text().splitlines() if line.strip()]
            if len(lines) != n or not all((out_dir / rec["audio"]).is_file() for rec in lines):
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def make_spoken_commands(out_dir: Path | str, utterances: int = 500, test_utterances: int = 150,
                         seed: int = 0) -> Path:
    """Write the spoken-commands set to ``out_dir`` (see the module doc) unless it is already there; returns it."""
    import soundfile as sf
    out_dir = Path(out_dir)
    settings = make_settings(utterances, test_utterances, seed)
    if is_up_to_date(out_dir, settings):
        return out_dir
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} not found; {INSTALL}")
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    (out_dir / "synth.json").unlink(missing_ok=True)      # written last: its absence marks an incomplete folder
    specs = {"train": [make_spec(seed, "train", i, i) for i in range(utterances)],
             "test": [make_spec(seed, "test", i, utterances + i) for i in range(test_utterances)]}
    jobs = [(split, spec) for split, group in specs.items() for spec in group]
    wanted = {f"{spec.number:05d}.wav" for _, spec in jobs}
    for old in (out_dir / "wav").iterdir():             # files of an earlier, larger run of this generator
        if re.fullmatch(r"\d{5,}\.wav", old.name) and old.name not in wanted:
            old.unlink()

    def one(job: tuple[str, Spec]) -> dict:
        split, spec = job
        wave = synthesise(spec, seed, split)
        name = f"wav/{spec.number:05d}.wav"
        sf.write(out_dir / name, wave, SAMPLE_RATE, subtype="PCM_16")
        return {"id": f"{spec.number:05d}", "audio": name, "text": spec.text, "speaker": spec.speaker,
                "hard": spec.hard, "seconds": round(wave.size / SAMPLE_RATE, 3)}

    with ThreadPoolExecutor(max_workers=2) as pool:
        records = list(pool.map(one, jobs))
    for split in ("train", "test"):
        lines = [json.dumps(r) for (s, _), r in zip(jobs, records) if s == split]
        _write_atomic(out_dir / f"{split}.jsonl", "\n".join(lines) + "\n")
    _write_atomic(out_dir / "synth.json", json.dumps(settings, indent=2) + "\n")
    return out_dir


_PARTIAL = ".partial."


def _partial_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}{_PARTIAL}{socket.gethostname()}."


def _remove_abandoned(out_dir: Path) -> None:
    """Delete temporary folders that an interrupted :func:`make_on_first_use` on this machine left beside
    ``out_dir`` (their process is gone); a generation still running keeps its folder."""
    prefix = _partial_prefix(out_dir)
    for entry in out_dir.parent.iterdir():
        if not (entry.name.startswith(prefix) and entry.is_dir()):
            continue
        pid = entry.name[len(prefix):].split(".")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue                                       # still running
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue                                       # running under another user


def make_on_first_use(out_dir: Path | str, utterances: int, test_utterances: int, seed: int = 0,
                      log=None) -> Path:
    """Make the set in ``out_dir`` unless it is there (complete, with these settings), atomically: it is written
    into a temporary folder beside ``out_dir`` (``.NAME.partial.HOST.PID.*``) and renamed into place, so an
    interrupted run leaves no folder that looks complete (the next one deletes the leftover). ``out_dir`` may
    exist only when empty. Writes a line to stderr (``log``) before and after, since it takes a while."""
    out_dir = Path(out_dir)
    settings = make_settings(utterances, test_utterances, seed)
    if is_up_to_date(out_dir, settings):
        return out_dir
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists but does not hold the complete spoken-commands set ({describe(settings)}): "
                        f"an interrupted `synth` run or other files; delete it to make the set again")
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} not found; {INSTALL}")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    parent = Path(os.path.abspath(out_dir)).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(Path(os.path.abspath(out_dir)))
        tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out_dir)}{os.getpid()}.", dir=parent))
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot make the folder: {exc.strerror or exc}") from None
    log(f"activelab: making the spoken-commands data in {out_dir} ({utterances} + {test_utterances} utterances, "
        f"once; about {max(1, round((utterances + test_utterances) / 45))} s) ...")
    start = time.perf_counter()
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)                        # mkdtemp made it private
        make_spoken_commands(tmp, utterances, test_utterances, seed)
        try:
            os.rename(tmp, out_dir)                         # replaces an empty folder; never a non-empty one
        except OSError as exc:
            if not is_up_to_date(out_dir, settings):        # else another process made the same set first
                raise UserError(f"{out_dir}: cannot put the new data in place: {exc.strerror or exc}") from None
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"activelab: made {out_dir} in {time.perf_counter() - start:.1f} s")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m activelab.plugins.speech.synth",
                                     description="Write spoken commands (espeak-ng + sox) as a speech manifest set.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--utterances", type=int, default=500, help="training (pool) utterances (default 500)")
    parser.add_argument("--test-utterances", type=int, default=150, help="test utterances (default 150)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if is_up_to_date(args.out_dir, make_settings(args.utterances, args.test_utterances, args.seed)):
            print(f"{args.out_dir}: up to date")
            return 0
        make_spoken_commands(args.out_dir, args.utterances, args.test_utterances, args.seed)
    except UserError as exc:
        print(f"synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out_dir}: wrote {args.utterances} train and {args.test_utterances} test utterances "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
