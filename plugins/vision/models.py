"""The classifiers: a small CNN (default), torchvision's ResNet-18 trained from scratch, and a linear probe on a
frozen representation computed outside the model.

All three split into ``features(x)`` (the penultimate representation, returned as embeddings) and ``classify(h)``
(dropout, then the linear classifier), so ``forward(x) == classify(features(x))``. Dropout sits only in front of
the classifier, as in CEAL's AlexNet-style heads; MC-dropout committees therefore differ only in the head.
:class:`LinearProbe` is that head alone: its input is already the representation (the task's label-free
``features``), so ``features`` is the identity and the linear layer is the model's last and only layer.

Pretrained networks from local files (``model: {kind: torchvision | huggingface, ...}``) are built by
:mod:`.backbones` (:class:`~.backbones.BackboneClassifier`), with the same ``features`` / ``classify`` split.
"""
from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks, adaptive pooling, a hidden layer and the classifier.

    The adaptive pooling makes the same network work for 8x8 digits (8 -> 4 -> 2) and 28x28 MNIST
    (28 -> 14 -> 7 -> 2x2 bins). About 100k parameters: a fit on a few hundred digits takes seconds on a CPU.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5, width: int = 32, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 4, hidden), nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)
        self.embedding_dim = hidden

    #: what a loss-prediction module reads (``loss_prediction``): each conv block's pooled output and the hidden layer
    stages = ("body.4", "body.7", "body.11")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 without pretrained weights, adapted to the data.

    The first convolution takes ``in_channels``; for small images (up to 64 px) it becomes a 3x3 stride-1 conv
    and the max-pool is dropped (the usual CIFAR adaptation), so 8x8 or 28x28 inputs keep a spatial extent.
    Embeddings are the 512-d globally pooled features; dropout sits before ``fc``.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5, image_size: int = 32):
        super().__init__()
        from torchvision.models import resnet18
        net = resnet18(weights=None, num_classes=num_classes)
        if image_size <= 64:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.net = net
        self.dropout = nn.Dropout(dropout)
        self.fc = net.fc
        net.fc = nn.Identity()
        self.embedding_dim = 512

    #: what a loss-prediction module reads (``loss_prediction``): the four residual stages, as in Yoo & Kweon
    stages = ("net.layer1", "net.layer2", "net.layer3", "net.layer4")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)          # fc is the identity: avgpool + flatten output

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class LinearProbe(nn.Module):
    """Dropout and a linear classifier on feature vectors that a frozen encoder (or projection) computed outside.

    ``features(h)`` is the identity: the embeddings are the frozen features themselves, the input of the linear
    layer (so gradient embeddings built from them, BADGE's, are exact). Only ``fc`` has weights.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)
        self.embedding_dim = in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


MODELS = {"small_cnn", "resnet18", "linear_probe"}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, dropout: float,
                feature_dim: int | None = None) -> nn.Module:
    """The classifier ``name``; ``linear_probe`` needs ``feature_dim``, the width of the features it reads."""
    if name == "small_cnn":
        return SmallCNN(in_channels, num_classes, dropout)
    if name == "resnet18":
        return ResNet18(in_channels, num_classes, dropout, image_size)
    if name == "linear_probe":
        if feature_dim is None:
            raise ValueError("linear_probe needs feature_dim, the width of its input features")
        return LinearProbe(feature_dim, num_classes, dropout)
    raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
