"""Your own model: pretrained image classifiers from local files for the classification task, and the one check
of a weights file that classification and detection share.

``task.params.model`` takes, besides the built-in ``small_cnn``, ``resnet18`` and ``linear_probe``:

- ``{kind: torchvision, arch: NAME, weights: FILE}``: any classification architecture of ``torchvision.models``
  (``torchvision.models.list_models(module=torchvision.models)``: resnet18/50, efficientnet_b0, convnext_tiny,
  vit_b_16, swin_t, ...) built with ``weights=None`` and loaded from an ordinary torchvision state dict
  (``torch.save(model.state_dict(), FILE)``), read with ``torch.load(weights_only=True)``. ``weights: null``
  trains the architecture from scratch (``freeze: none`` only). squeezenet (whose output layer is a convolution)
  is not supported.
- ``{kind: huggingface, path: DIR}``: a local ``transformers`` image classifier (``save_pretrained`` or a Hub
  download copied from elsewhere: config.json, weights, preprocessor_config.json), loaded with
  ``AutoModelForImageClassification`` and ``AutoImageProcessor``, ``local_files_only``: nothing is downloaded.

How the model is put together (:class:`BackboneClassifier`):

- **The head**: the architecture's output layer is its LAST ``nn.Linear`` module in registration order (resnet,
  regnet, shufflenet, googlenet: ``fc``; efficientnet, mobilenet, convnext, vgg, densenet: ``classifier`` or its
  last element; vit: ``heads.head``; swin: ``head``; transformers models: ``classifier`` or its last element).
  It is replaced by the identity, so the rest of the network (the "body") outputs the head's input: these are the
  task's ``embeddings`` (the penultimate features). A new ``nn.Linear`` for the task's classes (``fc``) is
  initialised from the fit's seed; the checkpoint's own head is never used, whatever its size.
- **Dropout for MC committees**: the task's MC-dropout modes draw masks in front of the head only (features once,
  the head T times). If the architecture has an ``nn.Dropout`` right before its output layer (efficientnet,
  mobilenet, mnasnet, vgg, googlenet, inception_v3; transformers' EfficientNet, MobileNetV2), that dropout is
  moved in front of the new head with its own rate; otherwise (resnet, convnext, vit, swin, regnet, densenet,
  transformers' ViT, ConvNeXT, ResNet, ...) one is added with the task's ``dropout``. ``model.dropout`` sets the
  rate in either case. Dropout elsewhere in the body acts in training only, never in MC passes.
- **Inputs**: the pool's images (float, [0, 1]) are prepared inside the model, batch by batch, so the pool stays
  in memory at its own size: grey images are repeated to 3 channels when the model takes 3, images are resized
  (bilinear, antialiased) to the model's input size, then normalised. torchvision: the size is ``image_size``
  (default: the data's size, raised to the architecture's minimum: 224 x 224 for vit_*, swin_*, maxvit_t; 32 for
  convnext and vgg; 29 for densenet; 75 for inception_v3); normalisation is ImageNet's mean and std (what
  torchvision's pretrained weights expect), or the pool's own channel statistics with ``normalize: pool``.
  transformers: the processor's output size (``crop_size`` when it centre-crops, else ``size``; else the config's
  ``image_size``) and its ``image_mean``/``image_std``; images go straight to that size (no crop). COST: an 8 x 8
  digit resized to 224 x 224 costs what a 224 x 224 image costs: vit_b_16 is about 17.5 GFLOPs per image and
  forward pass, so scoring a pool of 60,000 takes hours on a CPU (minutes on a GPU); use ``freeze: linear_probe``
  (the pool's features are then computed once per run) or a convolutional architecture at the data's size.
- **freeze**: ``none`` (default) fine-tunes every weight; ``linear_probe`` trains only the new head, on features
  of the frozen body, which is kept in eval mode (batch norm keeps its statistics) and whose features are
  computed once per run and kept in memory (N x D floats: 60,000 x 2048 is 490 MB); ``last_block`` trains the
  head, the architecture's last block and everything that runs after it (final norms, pre-logit layers); the
  earlier layers are frozen and in eval mode. The last block, per family:

  ==========================================  ==============================================================
  family                                      last block (then everything after it)
  ==========================================  ==============================================================
  resnet*, resnext*, wide_resnet*             ``layer4``
  regnet_*                                    ``trunk_output.block4``
  efficientnet_*, mobilenet_v2/v3             ``features[-2]`` (the last MBConv / inverted-residual stage; then
                                              the final 1x1 convolution)
  mnasnet*                                    ``layers[13]`` (the last inverted-residual stack)
  convnext_*, swin_*                          ``features[-1]`` (the last stage)
  vit_*                                       ``encoder.layers[-1]`` (the last encoder layer; then ``encoder.ln``)
  maxvit_t                                    ``blocks[-1]``
  densenet*                                   ``features.denseblock4`` (then ``norm5``)
  shufflenet_v2_*                             ``stage4`` (then ``conv5``)
  googlenet / inception_v3                    ``inception5b`` / ``Mixed_7c``
  vgg*, alexnet                               ``classifier`` (the fully connected layers)
  transformers models                         the last element of the model's largest ``nn.ModuleList``
                                              (ViT, DeiT, BEiT: the last encoder layer; ConvNeXT, ResNet, Swin:
                                              the last stage)
  ==========================================  ==============================================================

Errors are one-line :class:`~activelab.errors.UserError` naming ``task.params.model.weights`` (or ``.path``,
``.arch``) and what is wrong: a missing file or folder (a missing torchvision file: with the ``activelab pretrain``
command that makes one here, :mod:`.pretrain`), an unknown architecture (with the close names), a file that
is not a state dict (a whole pickled model, a training checkpoint holding one, garbage), a state dict of another
architecture (how many tensors are missing, unexpected or of another shape, with one example each), a transformers
folder of another kind (a translation model), ``transformers`` not installed. :func:`read_state_dict` and
:func:`load_checked` are the same checks for the detection task's ``weights_path``.

The user's files are only read, once, when the task is built; a SHA-256 of them is part of the task's checkpoint
``matches``, so a run does not resume on changed weights. Checkpoints hold the trainable tensors (the frozen ones
are the file's, restored from it): the head alone for ``linear_probe``, everything for ``none``.
"""
from __future__ import annotations

import copy
import difflib
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from activelab.errors import UserError
from activelab.recipe import DataPath
from activelab.torchkit.pretrained import WEIGHTS, fingerprint, first_line, has_weights, quiet, require_transformers

FIELD = "task.params.model"
INSTALL = "pip install 'activelab[vision]'"
FREEZE = ("linear_probe", "last_block", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNSUPPORTED = {"squeezenet1_0": "its output layer is a convolution, not a Linear layer",
               "squeezenet1_1": "its output layer is a convolution, not a Linear layer"}
# the last block per family (arch name prefixes; negative indices count from the end of a container's children)
LAST_BLOCK: tuple[tuple[tuple[str, ...], str], ...] = (
    (("resnet", "resnext", "wide_resnet"), "layer4"),
    (("regnet",), "trunk_output.-1"),
    (("efficientnet", "mobilenet"), "features.-2"),
    (("mnasnet",), "layers.-4"),
    (("convnext", "swin"), "features.-1"),
    (("vit",), "encoder.layers.-1"),
    (("maxvit",), "blocks.-1"),
    (("densenet",), "features.denseblock4"),
    (("shufflenet",), "stage4"),
    (("googlenet",), "inception5b"),
    (("inception",), "Mixed_7c"),
    (("vgg", "alexnet"), "classifier"),
)
# architectures built with auxiliary classifiers by default: built without, and the file's aux tensors ignored
AUXILIARY = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
HF_SIZE_KEYS = ("height", "width", "shortest_edge")


class WeightsError(UserError, ValueError):
    """A weights file that cannot be used (one line naming the field and the file). A ``ValueError`` too, so
    code that catches a model constructor's ``ValueError`` sees it."""


# ---------------------------------------------------------------------------------------------- weights files
def require_file(path: Path | str, field: str, what: str, make: str | None = None) -> Path:
    """``path`` (expanded), or a :class:`WeightsError` if it is missing or a folder. ``make``: a command that
    writes such a file here (``activelab pretrain ...``), named in the message for a missing file."""
    path = Path(path).expanduser()
    if not path.exists():
        made = f"make one with `{make}`, or " if make else ""
        raise WeightsError(f"{field}: {path} not found (activelab downloads no weights: {made}save a {what} state "
                           f"dict there with torch.save(model.state_dict(), path))")
    if path.is_dir():
        raise WeightsError(f"{field}: {path} is a folder, not a weights file (a {what} state dict saved with "
                           f"torch.save(model.state_dict(), path))")
    return path


def read_state_dict(path: Path | str, field: str, what: str, make: str | None = None) -> Mapping[str, torch.Tensor]:
    """The state dict in ``path``, read with ``torch.load(weights_only=True)`` on the CPU; a one-line
    :class:`WeightsError` naming ``field`` if the file is missing (naming ``make``, a command that writes one, see
    :func:`require_file`), unreadable or holds anything but a mapping of names to tensors (a whole pickled model, a
    training checkpoint with the state dict inside, garbage)."""
    path = require_file(path, field, what, make)
    where = f"{field}: {path}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:    # UnpicklingError, RuntimeError (not a zip), KeyError/EOFError (garbage), ...
        if "unsupported global" in str(exc).lower():     # weights_only refuses the class of a pickled object
            raise WeightsError(f"{where} is not a state dict: it holds pickled Python objects (a whole model saved "
                               f"with torch.save(model)?); save model.state_dict() instead") from None
        raise WeightsError(f"{where} cannot be read as a torch file ({first_line(exc)}): save a {what} state "
                           f"dict with torch.save(model.state_dict(), path)") from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{where} holds a {type(state).__name__}, not a state dict (a mapping of parameter names "
                           f"to tensors: torch.save(model.state_dict(), path))")
    if not state:
        raise WeightsError(f"{where} holds an empty dict, not a state dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        keys = ", ".join(repr(k) for k in list(state)[:4]) + (", ..." if len(state) > 4 else "")
        inner = next((k for k in ("state_dict", "model", "model_state_dict", "net") if isinstance(state.get(k),
                                                                                                 Mapping)), None)
        hint = (f": save the state dict alone, torch.save(checkpoint[{inner!r}], path)" if inner is not None
                else ": save torch.save(model.state_dict(), path)")
        raise WeightsError(f"{where} is not a state dict: a dict with keys {keys} whose values are not all "
                           f"tensors (a training checkpoint?){hint}")
    return state      # as loaded: a state dict's _metadata (module versions, which mnasnet reads) kept


def _skipped(key: str, ignore: Sequence[str]) -> bool:
    return key.endswith("num_batches_tracked") or any(key.startswith(p) for p in ignore)


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], field: str, path: Path | str, what: str,
                 ignore: Sequence[str] = ()) -> None:
    """Load ``state`` into ``module`` after checking that it fits: every tensor of the module present with its
    shape and no tensor left over, except keys starting with a prefix in ``ignore`` (a replaced head) and batch
    norm's ``num_batches_tracked`` counters. Otherwise a one-line :class:`WeightsError`: how many tensors are
    missing, unexpected or of another shape, with one example each."""
    expected = {k: v for k, v in module.state_dict().items() if not _skipped(k, ignore)}
    given = {k: v for k, v in state.items() if not _skipped(k, ignore)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its tensors missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k!r}: {list(given[k].shape)} in the file, "
                         f"{list(expected[k].shape)} expected)")
        hint = ""
        if given and all(k.startswith("module.") for k in given):
            hint = " (its keys start with 'module.': saved from DataParallel? save model.module.state_dict())"
        raise WeightsError(f"{field}: {Path(path).expanduser()} is not a {what} state dict: "
                           f"{'; '.join(parts)}{hint}")
    kept = OrderedDict((k, v) for k, v in state.items() if not any(k.startswith(p) for p in ignore))
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        kept._metadata = metadata    # type: ignore[attr-defined]
    try:
        module.load_state_dict(kept, strict=False)
    except (RuntimeError, ValueError) as exc:    # a module's own loading rules (mnasnet: its version metadata)
        raise WeightsError(f"{field}: {Path(path).expanduser()} cannot be loaded into {what}: {first_line(exc)}") \
            from None


# ---------------------------------------------------------------------------------------------- recipe sections
class TorchvisionModelConfig(BaseModel):
    """A torchvision classification architecture with local weights (see :mod:`activelab.plugins.vision.backbones`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["torchvision"] = Field(description="torchvision: a torchvision.models classification architecture")
    arch: str = Field(description="its name in torchvision.models (resnet18, resnet50, efficientnet_b0, convnext_tiny, "
                                  "vit_b_16, ...)")
    weights: DataPath | None = Field(None, description="a local state dict of that architecture "
                                                       "(torch.save(model.state_dict(), path)); null: train from "
                                                       "scratch (freeze: none)")
    freeze: Literal["linear_probe", "last_block", "none"] = Field(
        "none", description="none: fine-tune every weight; linear_probe: only the new head; last_block: the head "
                            "and the last block/stage")
    dropout: float | None = Field(None, ge=0, lt=1, description="dropout in front of the new head (default: the "
                                                                "architecture's own there, else the task's dropout)")
    image_size: int | None = Field(None, ge=1, description="resize images to this square size (default: the data's "
                                                           "size, raised to the architecture's minimum, 224 for vit)")
    normalize: Literal["imagenet", "pool"] = Field("imagenet", description="imagenet: ImageNet's mean and std (what "
                                                                           "torchvision's weights expect); pool: the "
                                                                           "pool's channel statistics")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        if arch in UNSUPPORTED:
            raise ValueError(f"{arch} is not supported: {UNSUPPORTED[arch]}")
        if arch not in names:
            close = difflib.get_close_matches(arch, names, n=4, cutoff=0.5)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise ValueError(f"unknown torchvision classification architecture {arch!r}{hint} (all: "
                             f"torchvision.models.list_models(module=torchvision.models))")
        return arch

    @model_validator(mode="after")
    def _frozen_needs_weights(self) -> "TorchvisionModelConfig":
        if self.weights is None and self.freeze != "none":
            raise ValueError(f"freeze: {self.freeze} freezes random weights when no weights file is given; give "
                             f"weights or use freeze: none")
        return self


class HFImageModelConfig(BaseModel):
    """A local ``transformers`` image classifier (see :mod:`activelab.plugins.vision.backbones`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["huggingface"] = Field(description="huggingface: a local transformers image classifier")
    path: DataPath = Field(description="checkpoint folder (save_pretrained or a Hub download): config.json, "
                                       "weights, preprocessor_config.json")
    freeze: Literal["linear_probe", "last_block", "none"] = Field(
        "none", description="none: fine-tune every weight; linear_probe: only the new head; last_block: the head "
                            "and the last encoder layer/stage")
    dropout: float | None = Field(None, ge=0, lt=1, description="dropout in front of the new head (default: the "
                                                                "model's own there, else the task's dropout)")


MODEL_KINDS = {"torchvision": TorchvisionModelConfig, "huggingface": HFImageModelConfig}
BackboneConfig = TorchvisionModelConfig | HFImageModelConfig


# ---------------------------------------------------------------------------------------------- the model
class Prepare(nn.Module):
    """Images in [0, 1] -> the model's input: grey repeated to ``channels``, resized to ``size``, normalised."""

    def __init__(self, channels: int, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.channels = channels
        self.size = tuple(size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


class HFBody(nn.Module):
    """A transformers image classifier whose output layer is the identity: pixel values -> penultimate features."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).logits


class BackboneClassifier(nn.Module):
    """``prep`` (resize, channels, normalisation), ``body`` (the network without its output layer), ``dropout``
    and ``fc`` (the new head): ``features(x) = body(prep(x))``, ``classify(h) = fc(dropout(h))``.

    ``frozen``: the body's modules that do not train (their parameters have ``requires_grad`` off and they stay in
    eval mode when the model trains); ``frozen_body``: the whole body is frozen (``freeze: linear_probe``)."""

    def __init__(self, prep: Prepare, body: nn.Module, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.prep = prep
        self.body = body
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        self.embedding_dim = dim
        self.frozen: list[nn.Module] = []
        self.frozen_params: list[nn.Parameter] = []
        self.frozen_body = False

    def freeze(self, roots: Sequence[nn.Module], params: Sequence[nn.Parameter] = ()) -> None:
        for module in roots:
            for p in module.parameters():
                p.requires_grad_(False)
        for p in params:
            p.requires_grad_(False)
        self.frozen = list(roots)
        self.frozen_params = list(params)
        self.frozen_body = any(m is self.body for m in roots)
        self.train(self.training)

    def frozen_keys(self) -> set[str]:
        """The ``state_dict`` keys of the frozen tensors (parameters and buffers): the pretrained weights as loaded,
        which training never changes."""
        tensors = {id(t) for m in self.frozen for t in (*m.parameters(), *m.buffers())}
        tensors |= {id(p) for p in self.frozen_params}
        return {k for k, v in self.state_dict(keep_vars=True).items() if id(v) in tensors}

    def train(self, mode: bool = True) -> "BackboneClassifier":
        super().train(mode)
        for module in self.frozen:
            module.train(False)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.prep(x))

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


# ---------------------------------------------------------------------------------------------- surgery
def _child(module: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The child ``name`` of ``module`` (a negative index counts from the end of its children)."""
    children = list(module.named_children())
    if name.lstrip("-").isdigit() and name.startswith("-"):
        return children[int(name)]
    return name, dict(children)[name]


def resolve(module: nn.Module, path: str) -> str:
    """The dotted name of the submodule at ``path`` (whose negative indices count children from the end)."""
    names = []
    for part in path.split("."):
        name, module = _child(module, part)
        names.append(name)
    return ".".join(names)


def strip_head(net: nn.Module) -> tuple[str, nn.Linear, float | None]:
    """Replace ``net``'s output layer (its last ``nn.Linear``) by the identity, and an ``nn.Dropout`` registered
    right before it in the same parent too; returns (the head's name, the head, that dropout's rate or None)."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("no Linear output layer")
    name, head = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    children = list(parent.named_children())
    index = [n for n, _ in children].index(attr)
    rate = None
    if index > 0 and type(children[index - 1][1]) is nn.Dropout:
        rate = float(children[index - 1][1].p)
        setattr(parent, children[index - 1][0], nn.Identity())
    setattr(parent, attr, nn.Identity())
    return name, head, rate


def freeze_plan(body: nn.Module, block: str | None) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """For ``freeze: last_block`` at the submodule ``block`` of ``body``: the modules that run before it (at every
    level of its ancestry, siblings registered before the branch leading to it) and the parameters held directly
    by its ancestors (vit's class token and position embedding); ``block=None``: the whole body."""
    if block is None:
        return [body], []
    roots: list[nn.Module] = []
    params: list[nn.Parameter] = []
    module = body
    for part in block.split("."):
        params.extend(module.parameters(recurse=False))
        for name, child in module.named_children():
            if name == part:
                module = child
                break
            roots.append(child)
    return roots, params


def _largest_module_list(net: nn.Module, kinds: tuple[type, ...] = (nn.ModuleList,)) -> str | None:
    """The name of the ``nn.ModuleList`` (or other container of ``kinds``) holding the most parameters (a
    transformers model's layers or stages)."""
    lists = [(sum(p.numel() for p in m.parameters()), name) for name, m in net.named_modules()
             if isinstance(m, kinds) and len(m) > 1 and name]
    return max(lists, key=lambda t: t[0])[1] if lists else None


class Backbone:
    """A checked pretrained classifier, built once per task: :meth:`new_model` gives a copy with a fresh head.

    ``in_channels`` and ``data_size`` describe the pool's images; ``pool_mean``/``pool_std`` are their channel
    statistics (``normalize: pool``); ``dropout`` is the task's."""

    def __init__(self, cfg: BackboneConfig, in_channels: int, data_size: tuple[int, int], num_classes: int,
                 dropout: float, pool_mean: Sequence[float], pool_std: Sequence[float]):
        self.cfg = cfg
        self.num_classes = num_classes
        if isinstance(cfg, TorchvisionModelConfig):
            self._torchvision(cfg, in_channels, data_size, pool_mean, pool_std)
        else:
            self._huggingface(cfg, in_channels, data_size)
        self.rate = cfg.dropout if cfg.dropout is not None else self.own_rate if self.own_rate is not None \
            else dropout
        self.dim = self._dry_run(in_channels, data_size)
        roots, params = freeze_plan(self.body, self.block) if cfg.freeze != "none" else ([], [])
        self.fingerprint = fingerprint(self.source) if self.source is not None else None    # as read, once
        self.roots = [name for name, m in self.body.named_modules() if any(m is r for r in roots)]
        self.params = [name for name, p in self.body.named_parameters() if any(p is q for q in params)]
        self.frozen_keys = self.new_model().frozen_keys()     # what checkpoints need not hold

    # ------------------------------------------------------------------------------------------ torchvision
    def _torchvision(self, cfg: TorchvisionModelConfig, in_channels: int, data_size: tuple[int, int],
                     pool_mean: Sequence[float], pool_std: Sequence[float]) -> None:
        import torchvision

        arch = cfg.arch
        kwargs: dict[str, Any] = {}
        if arch in AUXILIARY:
            kwargs = {"aux_logits": False, "init_weights": cfg.weights is None,
                      "transform_input": cfg.weights is not None}   # as torchvision's own pretrained weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = torchvision.models.get_model(arch, weights=None, **kwargs)
        try:
            head_name, head, self.own_rate = strip_head(net)
        except ValueError:
            raise UserError(f"{FIELD}.arch: {arch} is not supported: it has no Linear output layer") from None
        self.where = f"{FIELD}.weights"
        self.source = None
        if cfg.weights is not None:
            state = read_state_dict(cfg.weights, self.where, f"torchvision {arch}",     # or pretrain one here
                                    make=f"activelab pretrain --arch {arch} --out {cfg.weights}")
            load_checked(net, state, self.where, cfg.weights, f"torchvision {arch}",
                         ignore=(f"{head_name}.", *AUXILIARY.get(arch, ())))
            self.source = Path(cfg.weights).expanduser()
        self.body = net.eval()
        self.head_name = head_name
        fixed = getattr(net, "image_size", None)            # VisionTransformer: position embeddings of one size
        if fixed is not None:
            minimum = (int(fixed), int(fixed))
        else:
            minimum = tuple(torchvision.models.get_model_weights(arch).DEFAULT.meta.get("min_size", (1, 1)))
        if cfg.image_size is not None:
            size = (cfg.image_size, cfg.image_size)
            if fixed is not None and size != minimum:
                raise UserError(f"{FIELD}.image_size: {arch} takes {minimum[0]} x {minimum[1]} images only (its "
                                f"position embeddings); remove image_size")
            if size[0] < minimum[0] or size[1] < minimum[1]:
                raise UserError(f"{FIELD}.image_size: {cfg.image_size} is below {arch}'s smallest input "
                                f"{minimum[0]} x {minimum[1]}")
        else:
            size = (max(data_size[0], minimum[0]), max(data_size[1], minimum[1]))
        if cfg.normalize == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = list(pool_mean), list(pool_std)
        self.prep = Prepare(3, size, mean, std)
        self.block = self._tv_block(net) if cfg.freeze == "last_block" else None
        self.kind = f"torchvision:{arch}"

    def _tv_block(self, net: nn.Module) -> str:
        arch = self.cfg.arch
        for prefixes, path in LAST_BLOCK:
            if arch.startswith(prefixes):
                try:
                    return resolve(net, path)
                except (KeyError, IndexError):      # another layout in another torchvision: the rule below
                    break
        # a family not in the table: the last child of its largest stack of layers
        name = _largest_module_list(net, (nn.ModuleList, nn.Sequential)) or ""
        container = net.get_submodule(name) if name else None
        if container is None:
            raise UserError(f"{FIELD}.freeze: last_block is not defined for {arch}; use linear_probe or none")
        return f"{name}.{list(container.named_children())[-1][0]}"

    # ------------------------------------------------------------------------------------------ transformers
    def _huggingface(self, cfg: HFImageModelConfig, in_channels: int, data_size: tuple[int, int]) -> None:
        transformers = require_transformers(FIELD, INSTALL)
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as IMAGE

        path = Path(cfg.path).expanduser()
        where = f"{FIELD}.path: {path}"
        self.where = f"{FIELD}.path"
        if not path.exists():
            raise UserError(f"{where} not found (a checkpoint folder: config.json, weights, "
                            f"preprocessor_config.json)")
        if not path.is_dir():
            raise UserError(f"{where} is not a folder (a checkpoint folder, as save_pretrained writes)")
        if not (path / "config.json").is_file():
            raise UserError(f"{where} has no config.json: not a transformers checkpoint folder")
        with quiet():
            try:
                config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
            except Exception as exc:     # an unknown model type, broken JSON, ...
                raise UserError(f"{where}: cannot read config.json: {first_line(exc)}") from None
        architectures = list(getattr(config, "architectures", None) or [])
        held = f"a {'/'.join(architectures)} ({config.model_type})" if architectures else f"a {config.model_type} model"
        if config.model_type not in IMAGE:
            raise UserError(f"{where} holds {held}, not an image classifier: kind huggingface needs a checkpoint "
                            f"that AutoModelForImageClassification loads (ViT, DeiT, BEiT, ConvNeXT, ResNet, Swin, "
                            f"EfficientNet, ...)")
        if not has_weights(path):
            raise UserError(f"{where} has no model weights ({' or '.join(WEIGHTS[::2])})")
        if not (path / "preprocessor_config.json").is_file():
            raise UserError(f"{where} has no preprocessor_config.json (the image processor: input size and "
                            f"normalisation); copy it from where the model came from")
        with quiet():
            try:
                processor = transformers.AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
            except Exception as exc:
                raise UserError(f"{where}: cannot load its image processor: {first_line(exc)}") from None
            try:
                net, info = transformers.AutoModelForImageClassification.from_pretrained(
                    str(path), local_files_only=True, dtype=torch.float32, output_loading_info=True)
            except Exception as exc:
                raise UserError(f"{where}: cannot load the model: {first_line(exc)}") from None
        try:
            head_name, head, self.own_rate = strip_head(net)
        except ValueError:
            raise UserError(f"{where}: a {type(net).__name__} has no Linear output layer to replace") from None
        lacking = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(f"{head_name}."))
        if lacking:
            more = f" (+{len(lacking) - 1} more)" if len(lacking) > 1 else ""
            raise UserError(f"{where}: the weights lack {lacking[0]}{more}: not a complete {type(net).__name__} "
                            f"checkpoint")
        channels = int(getattr(config, "num_channels", 3) or 3)
        if in_channels not in (1, channels):
            raise UserError(f"{where}: the model takes {channels}-channel images, the data has {in_channels} "
                            f"channels")
        self.body = HFBody(net).eval()
        self.head_name = f"net.{head_name}"
        size = _processor_size(processor) or _pair(getattr(config, "image_size", None)) or tuple(data_size)
        if getattr(processor, "do_normalize", True) and getattr(processor, "image_mean", None) is not None:
            mean, std = _channels(processor.image_mean, channels), _channels(processor.image_std, channels)
        else:
            mean, std = [0.0] * channels, [1.0] * channels
        self.prep = Prepare(channels, size, mean, std)
        self.block = None
        if cfg.freeze == "last_block":
            stack = _largest_module_list(net)
            if stack is None:
                raise UserError(f"{FIELD}.freeze: last_block: a {type(net).__name__} has no list of layers or "
                                f"stages; use linear_probe or none")
            self.block = f"net.{stack}.{len(net.get_submodule(stack)) - 1}"
        self.source = path
        self.kind = f"huggingface:{type(net).__name__}"

    # ------------------------------------------------------------------------------------------ common
    def _dry_run(self, in_channels: int, data_size: tuple[int, int]) -> int:
        """The body's output width, checked on two blank images of the data's shape."""
        x = torch.zeros(2, in_channels, *data_size)
        try:
            with torch.no_grad():
                h = self.body(self.prep(x))
        except Exception as exc:
            field = f"{FIELD}.image_size" if isinstance(self.cfg, TorchvisionModelConfig) else self.where
            raise UserError(f"{field}: the model does not take {self.prep.size[0]} x {self.prep.size[1]} images: "
                            f"{first_line(exc)}") from None
        if h.dim() != 2 or h.shape[0] != 2:
            raise UserError(f"{self.where}: the model's penultimate features have shape {list(h.shape[1:])}, not a "
                            f"vector per image: its output layer is not its last operation; not supported")
        return int(h.shape[1])

    def matches(self) -> dict[str, Any]:
        """What a checkpoint of this model must match: the architecture and the user's file(s)."""
        return {"model": self.kind, "freeze": self.cfg.freeze, "weights": self.fingerprint}

    def new_model(self) -> BackboneClassifier:
        """A copy of the pretrained body with a new head (drawn from torch's global generator: seed it), frozen as
        ``freeze`` says, in eval mode."""
        body = copy.deepcopy(self.body)
        model = BackboneClassifier(copy.deepcopy(self.prep), body, self.dim, self.num_classes, self.rate)
        modules = dict(body.named_modules())
        params = dict(body.named_parameters())
        model.freeze([modules[n] for n in self.roots], [params[n] for n in self.params])
        return model.eval()


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value), int(value)
    return int(value[0]), int(value[1])


def _get(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, Mapping):
        return size.get(key)
    return getattr(size, key, None)


def _processor_size(processor: Any) -> tuple[int, int] | None:
    """The (height, width) a transformers image processor produces: its crop when it centre-crops, else its size."""
    for attr in (("crop_size",) if getattr(processor, "do_center_crop", False) else ()) + ("size",):
        size = getattr(processor, attr, None)
        if isinstance(size, int):
            return size, size
        h, w, edge = (_get(size, k) for k in HF_SIZE_KEYS)
        if h and w:
            return int(h), int(w)
        if edge:
            return int(edge), int(edge)
    return None


def _channels(values: Any, channels: int) -> list[float]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return values * channels if len(values) == 1 else values
