"""``activelab pretrain``: a backbone trained on a fully labelled source set that ships here, saved as an ordinary
torchvision weights file that ``model: {kind: torchvision, arch: ARCH, weights: FILE}`` loads (transfer learning
without a download; the verb is in :mod:`.commands`).

What it does:

- **Data**: any source the classification task reads (``task.params.data``: ``fashion_mnist``, ``mnist``,
  ``digits``, ``imagefolder``, ``hf_disk``), loaded by the task's own loaders (:func:`.datasets.load_data`): the
  source's own train split (or the task's seeded held-out split where it has none) trains, its test split is
  where the accuracy printed at the end is measured. ``max_train`` / ``max_test`` cut them down (stratified,
  seeded: the data section's ``max_pool`` / ``max_test``). Every label of the training split is used.
- **Model and inputs**: built exactly as the classification task builds ``{kind: torchvision, arch, weights: null}``
  (:class:`.backbones.Backbone`, ``weights=None``): the same input preparation inside the model (grey images repeated
  to 3 channels, resized to ``image_size`` (default: the data's size raised to the architecture's minimum),
  normalised with ImageNet's mean and std, or with the training split's channel statistics under
  ``normalize="pool"``), the architecture's output layer replaced by a linear layer for the source's classes with
  the architecture's own dropout in front of it where it has one (efficientnet, mobilenet, vgg, ...) and none
  otherwise (resnet: no dropout, as torchvision trains it).
- **Training**: Adam (``lr``, ``weight_decay``) with a cosine decay of the learning rate to 0 over all steps,
  ``epochs`` passes over the shuffled training split in batches of ``batch_size`` (a last batch of one image is
  dropped: batch norm cannot train on it); no data augmentation. Initialisation, shuffling and dropout are drawn
  from generators seeded by ``seed`` (:func:`activelab.protocol.seed_for`), inside
  :func:`activelab.torchkit.seeded`, so the same arguments give bit-identical weights on the CPU with the same
  number of threads (torch reads ``OMP_NUM_THREADS``). A GPU is used when there is one (not bit-identical there).
- **The file**: ``torch.save(net.state_dict(), out)`` of a plain ``torchvision.models.get_model(arch,
  num_classes=K)`` holding the trained weights, every tensor of the architecture with its own name, the output
  layer sized for the source's K classes (the task replaces it, so any K loads). Written atomically (a temporary
  file in the same folder, then ``os.replace``): an interrupted run leaves the old file, or none, never half a file.
  googlenet and inception_v3 are saved without their auxiliary classifiers and trained with
  ``transform_input=True``, which is how the task builds them for a weights file.

**Normalisation convention.** The default, ImageNet's mean and std, is the convention of every torchvision weights
file and the task's default (``normalize: imagenet``), so the file is used by naming it in ``weights`` and nothing
else, and it means the same thing wherever it is copied. ``normalize="pool"`` standardises the source by its own
channel statistics; a recipe must then say ``normalize: pool`` too, and the target is standardised by its pool's
statistics (each data set by its own, not the source's). Either way the first batch norm layer re-centres the
inputs, so the choice matters little for fine-tuning; it matters for ``freeze: linear_probe``, where the frozen
batch norm statistics are the source's. ``image_size``, when given, must be given to the recipe too (the file does
not record it).

Every mistake in the arguments (an unknown architecture or data kind, a bad number, an output path that cannot be
written) is a one-line :class:`~activelab.errors.UserError` naming the option, raised before any data is read or
any training starts; data that cannot be read give the data loaders' one-line errors, with the recipe's field
names replaced by the options (``--data.path: ...``).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from tqdm.auto import tqdm

from activelab.device import pick_device
from activelab.errors import UserError
from activelab.protocol import seed_for
from activelab.recipe import pydantic_problems
from activelab.torchkit import build_optimizer, seeded

from .backbones import AUXILIARY, Backbone, TorchvisionModelConfig
from .datasets import FIELD as DATA_FIELD
from .datasets import DataConfig, load_data

# the data loaders' messages name the recipe's fields; here they are the command's options
OPTION_NAMES = ((f"{DATA_FIELD}.kind: ", "--data: "), (f"{DATA_FIELD}.max_pool", "--max-train"),
                (f"{DATA_FIELD}.max_test", "--max-test"), (DATA_FIELD, "--data"))
MODEL_OPTIONS = {"arch": "--arch", "image_size": "--image-size", "normalize": "--normalize"}


@dataclass(frozen=True)
class Pretrained:
    """What :func:`pretrain` made: the file, and how its weights were trained and how well they do on the source."""

    path: Path
    arch: str
    data: str
    accuracy: float          # on the source's test split
    n_train: int
    n_test: int
    num_classes: int
    image_size: tuple[int, int]
    normalize: str
    train_loss: float        # mean loss of the last epoch
    seconds: float
    custom_size: bool = False     # image_size was given (the recipe must give it too)

    def recipe_line(self) -> str:
        """The recipe's model section that loads this file as it was trained."""
        extra = (f", image_size: {self.image_size[0]}" if self.custom_size else "") + \
                (", normalize: pool" if self.normalize == "pool" else "")
        return f"model: {{kind: torchvision, arch: {self.arch}, weights: {self.path}{extra}}}"


def data_section(data: str | Mapping[str, Any], max_train: int | None = None,
                 max_test: int | None = None) -> DataConfig:
    """The data section: a source's kind (``fashion_mnist``) or a recipe's ``task.params.data`` mapping, with the
    caps applied; a one-line :class:`UserError` naming ``--data`` (or ``--max-train``, ``--max-test``)."""
    section = {"kind": data} if isinstance(data, str) else dict(data)
    if max_train is not None:
        section["max_pool"] = max_train
    if max_test is not None:
        section["max_test"] = max_test
    try:
        return DataConfig.model_validate(section)
    except ValidationError as exc:
        raise UserError(_options(pydantic_problems(exc, prefix=DATA_FIELD)[0])) from None


def model_section(arch: str, image_size: int | None, normalize: str) -> TorchvisionModelConfig:
    """The model section the task would read for ``{kind: torchvision, arch, weights: null}``; a one-line
    :class:`UserError` naming ``--arch`` (or ``--image-size``, ``--normalize``)."""
    try:
        return TorchvisionModelConfig(kind="torchvision", arch=arch, weights=None, image_size=image_size,
                                      normalize=normalize)
    except ValidationError as exc:
        err = exc.errors()[0]
        option = MODEL_OPTIONS.get(str(err["loc"][0]) if err.get("loc") else "", "--arch")
        message = pydantic_problems(exc)[0].split(": ", 1)[-1]
        raise UserError(f"{option}: {message.removeprefix('value error, ')}") from None


def _options(message: str) -> str:
    for field, option in OPTION_NAMES:
        message = message.replace(field, option)
    return message


def check_out(out: Path | str) -> Path:
    """The output file, its folder made; a one-line :class:`UserError` naming ``--out`` when it is a folder or its
    folder cannot be made or written (checked by writing a temporary file there, before any training)."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise UserError(f"--out: {path} is a folder; give a file name (e.g. {path / 'resnet18.pth'})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"):
            pass
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise UserError(f"--out: cannot write {path}: {blocker} is a file, not a folder") from None
    except OSError as exc:
        raise UserError(f"--out: cannot write {path}: {exc.strerror or exc}") from None
    return path


def save_atomically(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``torch.save(state, path)`` through a temporary file in the same folder and ``os.replace``, with the
    permissions an ordinary new file gets (the umask's)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def torchvision_net(arch: str, num_classes: int) -> torch.nn.Module:
    """A plain torchvision ``arch`` with ``num_classes`` outputs, built as the task builds one for a weights file
    (googlenet, inception_v3: no auxiliary classifiers, ``transform_input=True``); its initialisation is drawn
    inside :func:`seeded` and thrown away (the caller loads weights into it)."""
    import torchvision

    kwargs: dict[str, Any] = {}
    if arch in AUXILIARY:
        kwargs = {"aux_logits": False, "init_weights": False, "transform_input": True}
    with seeded(0), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


def pretrain(out: Path | str, data: str | Mapping[str, Any] = "fashion_mnist", arch: str = "resnet18",
             epochs: int = 2, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0,
             max_train: int | None = None, max_test: int | None = None, seed: int = 0,
             image_size: int | None = None, normalize: Literal["imagenet", "pool"] = "imagenet",
             eval_batch_size: int = 512, progress: bool = False,
             echo: Callable[[str], None] | None = None) -> Pretrained:
    """Train ``arch`` on the labelled source ``data`` and save its weights to ``out`` (see the module's
    docstring); returns what was made. ``progress``: a tqdm bar over the steps; ``echo``: called with one line per
    epoch."""
    started = time.perf_counter()
    for name, value, minimum in (("--epochs", epochs, 1), ("--batch-size", batch_size, 1),
                                 ("--eval-batch-size", eval_batch_size, 1)):
        if not isinstance(value, int) or value < minimum:
            raise UserError(f"{name}: must be an integer >= {minimum} (got {value!r})")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr: must be a number > 0 (got {lr!r})")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise UserError(f"--weight-decay: must be a number >= 0 (got {weight_decay!r})")
    model_cfg = model_section(arch, image_size, normalize)
    data_cfg = data_section(data, max_train, max_test)
    path = check_out(out)

    try:
        source = load_data(data_cfg, seed)
    except UserError as exc:
        raise UserError(_options(str(exc))) from None
    images, labels = source.pool.images, torch.from_numpy(source.pool.labels)
    if len(images) < 2:
        raise UserError(f"--data: the training split has {len(images)} image(s)")
    device = torch.device(pick_device())
    mean = images.mean(dim=(0, 2, 3)).tolist()
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    num_classes = len(source.classes)
    with seeded(seed_for(seed, "vision-pretrain-init")):
        backbone = Backbone(model_cfg, images.shape[1], tuple(images.shape[-2:]), num_classes, 0.0, mean, std)
        model = backbone.new_model()
    if arch in AUXILIARY:
        model.body.transform_input = True      # as the task builds it for a weights file
    model = model.to(device)

    n, bs = len(images), min(batch_size, len(images))
    starts = list(range(0, n, bs))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()    # no batch of one image (batch norm cannot train on it)
    bounds = list(zip(starts, starts[1:] + [n]))
    optimizer = build_optimizer(model.parameters(), "adam", lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(bounds))
    shuffle = torch.Generator().manual_seed(seed_for(seed, "vision-pretrain-shuffle"))
    loss_sum, last = 0.0, float("nan")
    model.train()
    with seeded(seed_for(seed, "vision-pretrain-fit"), device), \
            tqdm(total=epochs * len(bounds), desc=f"pretrain {arch}", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=shuffle)
            loss_sum, seen = 0.0, 0
            for a, b in bounds:
                batch = order[a:b]
                loss = F.cross_entropy(model(images[batch].to(device)), labels[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += float(loss.detach()) * (b - a)
                seen += b - a
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.4f}", refresh=False)
            last = loss_sum / seen
            if echo is not None:
                echo(f"epoch {epoch + 1}/{epochs}: train loss {last:.4f}")
    model.eval()

    test = source.test
    correct = 0
    with torch.inference_mode():
        for a in range(0, len(test), eval_batch_size):
            x = test.images[a:a + eval_batch_size].to(device)
            correct += int((model(x).argmax(dim=1).cpu().numpy() == test.labels[a:a + eval_batch_size]).sum())
    accuracy = correct / len(test)

    net = torchvision_net(arch, num_classes)
    body = model.body.cpu().state_dict()
    state = OrderedDict(body)
    state[f"{backbone.head_name}.weight"] = model.fc.weight.detach().cpu()
    state[f"{backbone.head_name}.bias"] = model.fc.bias.detach().cpu()
    state._metadata = getattr(body, "_metadata", None)     # type: ignore[attr-defined]  (mnasnet reads its version)
    net.load_state_dict(state, strict=True)       # every tensor of the plain architecture, with its shape
    save_atomically(net.state_dict(), path)
    return Pretrained(path=path, arch=arch, data=data_cfg.kind, accuracy=accuracy, n_train=n, n_test=len(test),
                      num_classes=num_classes, image_size=tuple(backbone.prep.size), normalize=normalize,
                      train_loss=last, seconds=time.perf_counter() - started, custom_size=image_size is not None)

