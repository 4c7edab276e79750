"""The command-line verbs of labelling outside activelab, ``activelab export`` and ``activelab import``. The core
plugin's manifest contributes them (``commands``); the work is done in :mod:`activelab.labelling.files`, imported
only when a verb runs."""
from __future__ import annotations

import argparse
import sys

from activelab.cli import Verb

FORMATS = ["label-studio", "csv", "jsonl"]


def _export_arguments(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("run")
    ex.add_argument("--format", required=True, choices=FORMATS)
    ex.add_argument("--out", help="file to write (default RUN/exchange/round_<r>.<json|csv|jsonl>); "
                                  "label-studio also writes the config next to it (.xml)")
    ex.add_argument("--media-url", help="turn image/audio paths into URLs: this prefix + the path relative to "
                                        "--media-root (Label Studio local files: '/data/local-files/?d=')")
    ex.add_argument("--media-root", help="folder the media paths are made relative to (with --media-url)")


def _export(args: argparse.Namespace) -> int:
    from .files import export

    written = export(args.run, args.format, args.out, args.media_url, args.media_root)
    for path in written:
        print(path)
    print(f"wrote the outstanding batch to {written[0]}" + (f" and its labelling config to {written[1]}"
                                                             if len(written) > 1 else ""), file=sys.stderr)
    return 0


def _import_arguments(im: argparse.ArgumentParser) -> None:
    im.add_argument("run")
    im.add_argument("file")
    im.add_argument("--format", choices=FORMATS, help="default: from the extension")


def _import(args: argparse.Namespace) -> int:
    from .files import import_answers

    r = import_answers(args.run, args.file, args.format)
    replaced = f" ({r.replaced} replacing earlier answers of this round)" if r.replaced else ""
    print(f"round {r.round}: stored {r.stored} label(s) and {r.skipped} skip(s){replaced}; {r.unchanged} "
          f"unchanged, {r.unanswered} not answered in the file; {len(r.problems)} problem(s). "
          f"Outstanding: {r.outstanding} of {r.batch_size}.")
    for line in r.problems:
        print(line, file=sys.stderr)
    if not r.outstanding:
        print(f"the batch is labelled; continue with: activelab resume {args.run}", file=sys.stderr)
    return 2 if r.problems else 0


EXPORT = Verb("write the outstanding batch for people to label in another tool", _export_arguments, _export)
IMPORT = Verb("store the answers of an exported batch (Label Studio JSON export, CSV, JSONL)", _import_arguments,
              _import)
