"""A person at a terminal: the oracle shows each queried item and reads the answer from the keyboard.

What it shows comes from ``task.describe(item)`` whatever the task: ``image`` (the path, a small colour preview
when the output is a terminal, and ``open`` to view it in the system's image viewer), ``audio`` (the path, its
duration, and ``play``), ``text``, and any other field as ``name: value`` (e.g. a detector's proposed boxes). The
model's current prediction (``task.suggest``) is offered as a suggestion that Enter accepts. Each answer goes back
to the loop, which commits it before this oracle shows the next item.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from typing import Any, Iterator, Literal, Sequence, TextIO

from pydantic import BaseModel, ConfigDict, Field

from activelab.protocol import Answer, Context, Env, ItemId, Label, Quit, Skip, Task, Undo

from . import label_schema

SHOWN = ("image", "audio", "text", "width", "height")   # fields with their own display
VIEWERS = ("xdg-open", "open")
PLAYERS = ("ffplay -nodisp -autoexit -loglevel quiet", "aplay -q", "paplay", "afplay", "play -q")
HELP = """Type the label and press Enter; Enter alone accepts the suggestion.
  skip   leave this item unlabelled this round
  undo   withdraw your previous answer (in this session) and ask that item again
  quit   stop here; `activelab resume RUN` asks for the rest of the batch
  open   view the image (when an image viewer is available)
  play   play the audio (when an audio player is available)
  ?      this help"""


class TerminalOracle:
    """Asks a person at a terminal, one item at a time: a label, ``skip``, ``undo``, ``quit`` or ``?``.

    An invalid label (``task.check_label`` refuses it) is answered with the reason and asked again. ``undo``
    withdraws the previous answer given in this session (yields :class:`Undo`) and asks that item again. End of
    input counts as ``quit``. ``stdin``/``stdout`` default to the process's own (tests pass their own streams).
    """

    interactive = True   # the loop draws no progress bar over the questions

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        annotator: str | None = Field(None, description="name stored with each label (default: $USER)")
        suggest: bool = Field(True, description="offer the model's prediction as the Enter default")
        preview: Literal["auto", "on", "off"] = Field("auto",
                                                      description="colour preview of images; auto: on a terminal")
        viewer: str | None = Field(None, description="command that opens an image (default: xdg-open or open)")
        player: str | None = Field(None, description="command that plays audio (default: ffplay, aplay, ...)")

    def __init__(self, config: Config | None = None, env: Env | None = None,
                 stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.config = config or self.Config()
        self._stdin, self._stdout = stdin, stdout
        self.annotator = self.config.annotator or os.environ.get("USER") or "person"

    # ------------------------------------------------------------------------------------------ dialogue
    def label(self, task: Task, items: Sequence[ItemId], ctx: Context) -> Iterator[Answer]:
        inp, out = self._stdin or sys.stdin, self._stdout or sys.stdout
        kind = label_schema.schema(task)
        hints = label_schema.suggestions(task, items, ctx.round) if self.config.suggest else [None] * len(items)
        if items:
            self._say(out, f"round {ctx.round}: {len(items)} item(s) to label. {self._labels_hint(kind)} "
                           f"Commands: skip, undo, quit, ? for help.")
        answered: list[int] = []     # positions answered in this session, for undo
        i, shown = 0, -1
        while i < len(items):
            item, hint = items[i], hints[i]
            if shown != i:
                self._show(out, task, item, i, len(items), ctx.round, hint, kind)
                shown = i
            out.write("label> ")
            out.flush()
            line = inp.readline()
            if not line:                                   # end of input
                self._say(out, "\nend of input: stopping; every answer given so far is saved")
                yield Quit()
                return
            text = line.strip()
            command = text.lower()
            if command in ("?", "help"):
                self._say(out, HELP + "\n" + self._labels_hint(kind))
            elif command == "quit":
                self._say(out, "stopping; every answer given so far is saved")
                yield Quit()
                return
            elif command == "skip":
                yield Skip(item, annotator=self.annotator)
                answered.append(i)
                i += 1
            elif command == "undo":
                if not answered:
                    self._say(out, "nothing to undo in this session")
                    continue
                i = answered.pop()
                yield Undo(items[i], annotator=self.annotator)
                self._say(out, f"withdrew the answer for {items[i]}")
                shown = -1
            elif command in ("open", "play"):
                self._say(out, self._media(command, task.describe(item)))
            else:
                if not text and hint is None:
                    self._say(out, "no suggestion for this item: type a label (? for help)")
                    continue
                try:
                    value = hint if not text else label_schema.parse(task, text, kind)
                    value = task.check_label(item, value)
                except ValueError as exc:
                    self._say(out, f"refused: {exc}")
                    continue
                yield Label(item, value, annotator=self.annotator)
                answered.append(i)
                i += 1
        if items:
            self._say(out, f"round {ctx.round}: batch done")

    # ------------------------------------------------------------------------------------------ display
    @staticmethod
    def _say(out: TextIO, text: str) -> None:
        out.write(text + "\n")
        out.flush()

    @staticmethod
    def _labels_hint(kind: dict[str, Any]) -> str:
        if kind.get("type") == "choices":
            names = kind.get("choices", [])
            listed = ", ".join(n if n == str(k) else f"{k}={n}" for k, n in enumerate(names))
            return f"Labels: {listed} (number or name)."
        if kind.get("type") == "rectangles":
            return ('Labels: a JSON list of boxes in pixels, [{"label": "<class>", "box": [x0, y0, x1, y1]}, ...]; '
                    f"classes: {', '.join(kind.get('classes', []))}.")
        if kind.get("type") == "text":
            return "Labels: type the text."
        return "Labels: as the task expects them."

    def _show(self, out: TextIO, task: Task, item: ItemId, i: int, n: int, round: int, hint: Any,
              kind: dict[str, Any]) -> None:
        info = label_schema.describe(task, item, kind)
        lines = [f"\n[round {round}] item {i + 1} of {n}: {item}"]
        if "image" in info:
            size = f" ({info['width']} x {info['height']})" if "width" in info and "height" in info else ""
            lines.append(f"  image: {info['image']}{size}" + ("  (type 'open' to view it)" if self._viewer() else ""))
            if self._want_preview(out):
                lines.extend("  " + row for row in ansi_preview(str(info["image"])))
        if "audio" in info:
            seconds = audio_seconds(str(info["audio"]))
            length = f" ({seconds:.1f} s)" if seconds is not None else ""
            lines.append(f"  audio: {info['audio']}{length}" + ("  (type 'play' to hear it)" if self._player() else ""))
        if "text" in info:
            lines.append(f"  text: {info['text']}")
        for key, value in info.items():
            if key not in SHOWN:
                shown = value if isinstance(value, str) else json.dumps(value)
                lines.append(f"  {key}: {shown[:300]}")
        if hint is not None:
            lines.append(f"  suggestion: {label_schema.show(hint, kind)}  (Enter accepts)")
        self._say(out, "\n".join(lines))

    def _want_preview(self, out: TextIO) -> bool:
        if self.config.preview != "auto":
            return self.config.preview == "on"
        return hasattr(out, "isatty") and out.isatty() and os.environ.get("TERM", "dumb") != "dumb"

    # ------------------------------------------------------------------------------------------ media
    def _viewer(self) -> list[str] | None:
        if self.config.viewer:
            return shlex.split(self.config.viewer)
        if sys.platform != "darwin" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return None
        return next((shlex.split(c) for c in VIEWERS if shutil.which(c)), None)

    def _player(self) -> list[str] | None:
        if self.config.player:
            return shlex.split(self.config.player)
        return next((shlex.split(c) for c in PLAYERS if shutil.which(c.split()[0])), None)

    def _media(self, command: str, info: dict[str, Any]) -> str:
        field, tool = ("image", self._viewer()) if command == "open" else ("audio", self._player())
        if field not in info:
            return f"this item has no {field}"
        if tool is None:
            return f"no {'image viewer' if command == 'open' else 'audio player'} found; the file is {info[field]}"
        try:
            if command == "open":
                subprocess.Popen([*tool, str(info[field])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            else:
                subprocess.run([*tool, str(info[field])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=False)
        except OSError as exc:
            return f"could not run {tool[0]}: {exc.strerror}"
        return f"{'opened' if command == 'open' else 'played'} {info[field]}"


def ansi_preview(path: str, width: int = 32) -> list[str]:
    """An image as rows of half-block characters in 24-bit colour (two pixels per character); [] if unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB")
            height = max(2, round(img.height * width / max(1, img.width) / 2) * 2)
            img = img.resize((width, height))
            px = img.load()
    except Exception:  # not an image we can read: the path is still shown
        return []
    rows = []
    for y in range(0, height, 2):
        cells = [f"\x1b[38;2;{px[x, y][0]};{px[x, y][1]};{px[x, y][2]}m"
                 f"\x1b[48;2;{px[x, y + 1][0]};{px[x, y + 1][1]};{px[x, y + 1][2]}m\u2580" for x in range(width)]
        rows.append("".join(cells) + "\x1b[0m")
    return rows


def audio_seconds(path: str) -> float | None:
    """Duration of an audio file: soundfile when installed, the standard library for WAV; None if unknown."""
    try:
        import soundfile

        return float(soundfile.info(path).duration)
    except Exception:
        pass
    try:
        import wave

        with wave.open(path) as w:
            return w.getnframes() / float(w.getframerate())
    except Exception:
        return None
