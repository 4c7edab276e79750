"""The vision plugin's command-line verb, ``activelab pretrain``: train a torchvision backbone on a fully labelled
source set that ships here (Fashion-MNIST, MNIST, digits, or any data section the classification task reads) and
save it as an ordinary torchvision weights file for ``model: {kind: torchvision, arch, weights: FILE}``. The plugin's
manifest contributes it (``commands``); the work is done in :mod:`.pretrain`, imported only when the verb runs, so
this module stays light (every ``activelab`` command imports it to build its parser).

Options are read as strings and checked by the verb itself, so a bad value is the CLI's one-line error (exit 2)
naming the option, like every other user error, not argparse's usage text."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from activelab.cli import Verb
from activelab.errors import UserError


def _arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Train a torchvision classification architecture from scratch on a fully labelled source set "
                     "and save its weights (torch.save(model.state_dict(), OUT), written atomically) for a recipe's "
                     "model: {kind: torchvision, arch: ARCH, weights: OUT}. Threads: torch's (OMP_NUM_THREADS).")
    p.add_argument("--out", required=True, help="the weights file to write, e.g. runs/backbones/resnet18_fashion.pth")
    p.add_argument("--data", default="fashion_mnist",
                   help="the labelled source: fashion_mnist (default), mnist, digits, or a recipe's data section as "
                        "YAML, e.g. '{kind: imagefolder, path: DIR, channels: 3}'")
    p.add_argument("--arch", default="resnet18", help="any classification architecture of torchvision.models "
                                                      "(default resnet18), built with weights=None")
    p.add_argument("--epochs", default="2", help="passes over the training split (default 2)")
    p.add_argument("--batch-size", default="128", help="default 128")
    p.add_argument("--lr", default="0.001", help="Adam's initial learning rate, decayed to 0 by a cosine (default "
                                                 "0.001)")
    p.add_argument("--weight-decay", default="0", help="Adam's L2 weight decay (default 0)")
    p.add_argument("--max-train", default=None, help="train on a stratified, seeded subset of this many images "
                                                     "(default: all)")
    p.add_argument("--max-test", default=None, help="measure the accuracy on a subset of the test split (default: "
                                                    "all)")
    p.add_argument("--seed", default="0", help="seeds the initialisation, the shuffling and the subsets (default 0)")
    p.add_argument("--image-size", default=None, help="resize images to this square size (default: the data's, "
                                                      "raised to the architecture's minimum); a recipe using the "
                                                      "file must give the same image_size")
    p.add_argument("--normalize", default="imagenet",
                   help="imagenet (default: the convention of torchvision's weights and the task's default) or pool "
                        "(the source's own channel statistics; a recipe using the file must then say normalize: "
                        "pool)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no line per epoch")


def _number(value: Any, option: str, kind: Callable[[str], Any]) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UserError(f"{option}: must be {what} (got {value!r})") from None


def _data(value: str) -> Any:
    """A bare name is a kind; anything else is read as a YAML mapping (the recipe's data section)."""
    if value.replace("_", "").isalnum():
        return value
    import yaml

    try:
        section = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise UserError(f"--data: not a source name or a YAML mapping ({str(exc).splitlines()[0]})") from None
    if not isinstance(section, dict):
        raise UserError(f"--data: give a source name (fashion_mnist, mnist, digits) or a mapping like "
                        f"'{{kind: imagefolder, path: DIR}}', got {value!r}")
    return section


def _run(args: argparse.Namespace) -> int:
    from .pretrain import pretrain

    quiet = args.quiet
    made = pretrain(
        args.out, data=_data(args.data), arch=args.arch, epochs=_number(args.epochs, "--epochs", int),
        batch_size=_number(args.batch_size, "--batch-size", int), lr=_number(args.lr, "--lr", float),
        weight_decay=_number(args.weight_decay, "--weight-decay", float),
        max_train=_number(args.max_train, "--max-train", int), max_test=_number(args.max_test, "--max-test", int),
        seed=_number(args.seed, "--seed", int), image_size=_number(args.image_size, "--image-size", int),
        normalize=args.normalize, progress=not quiet and sys.stderr.isatty(),
        echo=None if quiet else lambda line: print(line, file=sys.stderr))
    print(f"source test accuracy: {made.accuracy:.4f} ({made.data}: {made.n_test} test images; {made.arch} trained "
          f"on {made.n_train} images at {made.image_size[0]} x {made.image_size[1]}, final train loss "
          f"{made.train_loss:.4f}, {made.seconds:.0f} s)")
    print(f"saved: {made.path}")
    print(f"use it in a recipe: {made.recipe_line()}", file=sys.stderr)
    return 0


PRETRAIN = Verb("train a torchvision backbone on a labelled source set that ships here (Fashion-MNIST, MNIST, "
                "digits) and save its weights for model: {kind: torchvision, weights: FILE}", _arguments, _run)
