"""Faults in translation data that used to pass the readers: control characters (refused later, at every label);
path-valued config fields; the pool fingerprint the core compares on resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

pytest.importorskip("tokenizers")
pytest.importorskip("sacrebleu")

from activelab.cli import main  # noqa: E402
from activelab.errors import UserError  # noqa: E402
from activelab.plugins.nlp.data import DataConfig, check_text, load_data  # noqa: E402
from activelab.plugins.nlp.translation import TranslationConfig, TranslationTask  # noqa: E402
from activelab.protocol import Env  # noqa: E402

PAIRS = [(f"the source sentence {i}", f"la phrase cible {i}") for i in range(12)]
CONTROL = ["\x00", "\x07", "\x0b", "\x1b", "\x7f", "\x85", "\x9b", "\t", "\r"]


def _text(folder: Path, pairs) -> dict:
    (folder / "src.txt").write_text("".join(f"{s}\n" for s, _ in pairs), encoding="utf-8", newline="")
    (folder / "tgt.txt").write_text("".join(f"{t}\n" for _, t in pairs), encoding="utf-8", newline="")
    return {"kind": "text", "source_path": str(folder / "src.txt"), "target_path": str(folder / "tgt.txt")}


def _tsv(folder: Path, pairs) -> dict:
    (folder / "p.tsv").write_text("".join(f"{s}\t{t}\textra\n" for s, t in pairs), encoding="utf-8", newline="")
    return {"kind": "tsv", "path": str(folder / "p.tsv")}


def _with(char: str, side: str, row: int = 4):
    pairs = list(PAIRS)
    s, t = pairs[row]
    pairs[row] = ((s.replace("source", f"sou{char}rce"), t) if side == "source"
                  else (s, t.replace("cible", f"ci{char}ble")))
    return pairs


@pytest.mark.parametrize("char", CONTROL)
@pytest.mark.parametrize("side", ["source", "target"])
def test_a_sentence_with_a_control_character_is_refused_naming_the_file_and_line(tmp_path, char, side):
    pairs = _with(char, side)
    code = f"U+{ord(char):04X}"
    cfg = _text(tmp_path, pairs)
    with pytest.raises(UserError) as info:
        load_data(DataConfig(**cfg))
    shown = tmp_path / ("src.txt" if side == "source" else "tgt.txt")
    assert str(info.value).startswith(f"{shown}: line 5: {side} sentence ") and code in str(info.value), info.value
    if char != "\t":                                 # a tab separates the TSV's columns
        with pytest.raises(UserError) as info:
            load_data(DataConfig(**_tsv(tmp_path, pairs)))
        assert str(info.value).startswith(f"{tmp_path / 'p.tsv'}: line 5: {side} sentence ") and code in str(info.value)


def test_the_readers_and_the_label_check_share_one_rule(tmp_path):
    """A reference the reader accepts is never refused as a label, and the reverse, for every control character."""
    task = TranslationTask(TranslationConfig.model_validate({"data": {**_tsv(tmp_path, PAIRS), "test_fraction": 0.2},
                                                             "tokenizer": {"vocab_size": 300}}),
                           Env(seed=0, progress=False))
    item = task.pool_ids()[0]
    for code in [*range(0x20), *range(0x7f, 0xa0)]:
        if chr(code) in "\n":
            continue                                  # a newline ends the line in a file
        pairs = _with(chr(code), "target")
        try:
            load_data(DataConfig(**_text(tmp_path, pairs)))
            reader_ok = True
        except UserError:
            reader_ok = False
        try:
            task.check_label(item, pairs[4][1])
            label_ok = True
        except ValueError:
            label_ok = False
        assert reader_ok == label_ok is False, hex(code)
    assert task.check_label(item, " la phrase ") == check_text("la phrase") == "la phrase"


def test_control_characters_in_a_saved_dataset_name_the_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"en": s, "fr": t} for s, t in _with("\x1b", "target", row=3)]
    datasets.Dataset.from_dict({"translation": rows}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(UserError,
                       match=rf"^{tmp_path / 'hf'}: row 3: target sentence 'la phrase ci\\x1bble 3': .*U\+001B"):
        load_data(DataConfig(kind="hf_disk", path=str(tmp_path / "hf")))


def test_a_control_character_exits_2_on_one_line(tmp_path, capsys):
    recipe = {"name": "bad-nlp", "task": {"plugin": "nlp", "name": "translation",
                                          "params": {"data": _text(tmp_path, _with("\x07", "target", row=8)),
                                                     "tokenizer": {"vocab_size": 300}}},
              "scorer": {"name": "random"}, "loop": {"rounds": 1, "initial": 4, "batch": 2}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"{tmp_path / 'tgt.txt'}: line 9: target sentence" in err[0] and "U+0007" in err[0], err


def test_path_fields_are_paths_and_an_empty_one_is_refused(tmp_path):
    cfg = DataConfig(**_text(tmp_path, PAIRS), test_source_path="~/s.txt")
    assert (cfg.source_path, cfg.test_source_path) == (tmp_path / "src.txt", Path.home() / "s.txt")
    assert all(isinstance(getattr(cfg, f), Path) for f in ("source_path", "target_path"))
    assert load_data(cfg.model_copy(update={"test_source_path": None})).pool.sources[0] == PAIRS[0][0]
    for field in ("path", "test_path", "source_path", "target_path", "test_source_path", "test_target_path"):
        with pytest.raises(ValidationError, match="must be a path, not an empty string"):  # Path("") is the cwd
            DataConfig(kind="hf_disk", **{field: ""})


def test_the_data_fingerprint_is_stable_and_follows_every_sentence(tmp_path):
    def fingerprint(pairs) -> str:
        cfg = {"data": {**_tsv(tmp_path, pairs), "test_fraction": 0.25}, "tokenizer": {"vocab_size": 300}}
        return TranslationTask(TranslationConfig.model_validate(cfg), Env(seed=0, progress=False)).data_fingerprint()

    first = fingerprint(PAIRS)
    assert len(first) == 64 and fingerprint(PAIRS) == first                   # stable across loads
    changed = {fingerprint(PAIRS[:row] + [(PAIRS[row][0], "autre chose")] + PAIRS[row + 1:])
               for row in range(len(PAIRS))}                                   # each reference, pool or test
    changed |= {fingerprint(PAIRS[:5] + [("another source", PAIRS[5][1])] + PAIRS[6:])}
    assert first not in changed and len(changed) == len(PAIRS) + 1
