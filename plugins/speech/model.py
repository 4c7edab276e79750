"""The acoustic model: log-mel features -> convolutional subsampling -> encoder (BiLSTM or Conformer) -> CTC over
characters, with a loss-prediction module (Yoo & Kweon, CVPR 2019) reading pooled features from several depths.

Shapes: audio (S,) samples; features (T, n_mels), batched (B, T, n_mels); encoder taps (B, T', D); CTC
log-probabilities (B, T', V) with index 0 the CTC blank (``Forward.blank``: a transformers checkpoint's is its pad
token, :mod:`.hf`). Padding is tracked by lengths everywhere: pooling, CTC and
the posteriors' statistics never see padded frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from activelab.torchkit.lossnet import LossPredictionModule as SharedLossPredictionModule
from activelab.torchkit.lossnet import ranking_loss  # noqa: F401  (the shared ranking loss, re-exported)

BLANK = 0


def lengths_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool, True on real frames."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over time of (B, T, D) ignoring padding -> (B, D)."""
    mask = lengths_mask(lengths, x.shape[1]).to(x.dtype)[..., None]
    return (x * mask).sum(dim=1) / lengths.clamp_min(1)[:, None].to(x.dtype)


class LogMel(nn.Module):
    """Log-mel filterbanks (25 ms windows, 10 ms hop) of one utterance, normalised to zero mean and unit variance
    per mel bin over the utterance. No trainable parameters: the task computes them once per utterance."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 40):
        super().__init__()
        self.hop = sample_rate // 100
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=int(sample_rate * 0.025),
                                                        win_length=int(sample_rate * 0.025), hop_length=self.hop,
                                                        n_mels=n_mels)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(S,) samples -> (T, n_mels)."""
        feats = torch.log(self.mel(audio) + 1e-6).T
        return (feats - feats.mean(0)) / (feats.var(0, unbiased=False) + 1e-5).sqrt()


class Subsample(nn.Module):
    """``factor`` in {1, 2, 4}: that many stride-2 1-d convolutions (kernel 3) over time, each with a ReLU."""

    def __init__(self, n_mels: int, dim: int, factor: int):
        super().__init__()
        if factor not in (1, 2, 4):
            raise ValueError(f"subsample must be 1, 2 or 4, got {factor}")
        layers, channels = [], n_mels
        for _ in range(int(math.log2(factor))):
            layers += [nn.Conv1d(channels, dim, 3, stride=2, padding=1), nn.ReLU()]
            channels = dim
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(channels, dim)
        self.factor = factor

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(int(math.log2(self.factor))):
            lengths = (lengths - 1) // 2 + 1
        return lengths

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.convs(feats.transpose(1, 2)).transpose(1, 2) if self.factor > 1 else feats
        return self.proj(x), self.out_lengths(lengths)


class BiLSTMEncoder(nn.Module):
    """``layers`` single-layer bidirectional LSTMs (so every depth can be tapped), dropout between them."""

    def __init__(self, dim: int, layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True) for _ in range(layers))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        taps, cpu_lengths = [], lengths.cpu()
        for layer in self.layers:
            packed = nn.utils.rnn.pack_padded_sequence(x, cpu_lengths, batch_first=True, enforce_sorted=False)
            out, _ = layer(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            x = self.drop(x)
            taps.append(x)
        return taps


class ConformerEncoder(nn.Module):
    """torchaudio's Conformer blocks, run one by one so every depth can be tapped."""

    def __init__(self, dim: int, layers: int, dropout: float, heads: int = 4, kernel: int = 15):
        super().__init__()
        self.conformer = torchaudio.models.Conformer(input_dim=dim, num_heads=heads, ffn_dim=4 * dim,
                                                     num_layers=layers, depthwise_conv_kernel_size=kernel,
                                                     dropout=dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        padding = ~lengths_mask(lengths, x.shape[1])
        taps, h = [], x.transpose(0, 1)
        for layer in self.conformer.conformer_layers:
            h = layer(h, padding)
            taps.append(h.transpose(0, 1))
        return taps


class LossPredictionModule(SharedLossPredictionModule):
    """The learning-loss module of :mod:`activelab.torchkit.lossnet` on encoder taps: each tapped feature map
    (B, T, D) is mean-pooled over its real frames (``masked_mean``) before the shared module's FC(hidden) -> ReLU;
    the results are concatenated -> FC -> the predicted losses per utterance.

    ``outputs`` final layers share the pooled features: the speech task trains one head to rank the raw
    utterance loss and one to rank the loss per second of audio (a ranking-trained value has no fixed offset,
    so dividing a raw prediction by the duration afterwards would not give a per-second ranking).
    """

    def forward(self, taps: list[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:   # type: ignore[override]
        return super().forward([masked_mean(t, lengths) for t in taps])            # (B, outputs)


@dataclass
class Forward:
    log_probs: torch.Tensor      # (B, T', V) CTC log-probabilities
    lengths: torch.Tensor        # (B,) real frames of log_probs
    predicted: torch.Tensor      # (B, 2): predicted loss (raw, per second); zeros without a module
    blank: int = BLANK           # the CTC blank's index (a transformers checkpoint's pad token)


class CTCModel(nn.Module):
    """Features (B, T, n_mels) with lengths -> CTC log-probabilities over ``vocab_size`` characters + blank, and
    the two predicted losses."""

    def __init__(self, vocab_size: int, n_mels: int = 40, dim: int = 128, layers: int = 3,
                 encoder: str = "bilstm", subsample: int = 2, dropout: float = 0.1, loss_hidden: int | None = 128):
        super().__init__()
        self.subsample = Subsample(n_mels, dim, subsample)
        if encoder == "bilstm":
            self.encoder: nn.Module = BiLSTMEncoder(dim, layers, dropout)
        elif encoder == "conformer":
            self.encoder = ConformerEncoder(dim, layers, dropout)
        else:
            raise ValueError(f"unknown encoder {encoder!r}; available: bilstm, conformer")
        self.head = nn.Linear(dim, vocab_size + 1)
        # taps: the subsampled input and every encoder layer
        self.loss_module = LossPredictionModule([dim] * (layers + 1), loss_hidden, outputs=2) if loss_hidden else None

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, detach_taps: bool = False) -> Forward:
        x, lengths = self.subsample(feats, lengths)
        taps = [x] + self.encoder(x, lengths)
        log_probs = F.log_softmax(self.head(taps[-1]).float(), dim=-1)
        if self.loss_module is None:
            predicted = log_probs.new_zeros(len(log_probs), 2)
        else:
            predicted = self.loss_module([t.detach() if detach_taps else t for t in taps], lengths)
        return Forward(log_probs, lengths, predicted)

    def grow_vocabulary(self, vocab_size: int) -> None:
        """Add output rows for new characters (initialised as a fresh layer would be); the old rows are kept."""
        old = self.head
        if vocab_size + 1 == old.out_features:
            return
        if vocab_size + 1 < old.out_features:
            raise ValueError("the vocabulary can only grow")
        new = nn.Linear(old.in_features, vocab_size + 1).to(old.weight.device)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.head = new


def ctc_losses(out: Forward, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance CTC loss ``-log p(y|x)`` (B,), summed over the utterance; infinite (impossible) alignments
    become 0 with no gradient (``zero_infinity``)."""
    return F.ctc_loss(out.log_probs.transpose(0, 1), targets, out.lengths, target_lengths, blank=out.blank,
                      reduction="none", zero_infinity=True)


def greedy_decode(out: Forward) -> list[list[int]]:
    """Best path per utterance: argmax per frame, repeats merged, blanks removed (token ids, blank excluded)."""
    best = out.log_probs.argmax(dim=-1).cpu()
    result = []
    for row, n in zip(best, out.lengths.cpu().tolist()):
        tokens, previous = [], out.blank
        for t in row[:n].tolist():
            if t != previous and t != out.blank:
                tokens.append(t)
            previous = t
        result.append(tokens)
    return result


def posterior_statistics(out: Forward) -> tuple[torch.Tensor, torch.Tensor]:
    """Length-normalised uncertainty from the CTC posteriors, per utterance:

    - least confidence ``1 - exp(mean_t log max_k p_t(k))``: one minus the geometric-mean frame confidence of the
      best path (the per-frame normalisation keeps long utterances from scoring high for their length alone);
    - entropy ``mean_t H(p_t)`` over real frames.
    """
    mask = lengths_mask(out.lengths, out.log_probs.shape[1]).to(out.log_probs.dtype)
    n = out.lengths.clamp_min(1).to(out.log_probs.dtype)
    best = out.log_probs.max(dim=-1).values
    confidence = torch.exp((best * mask).sum(1) / n)
    frame_entropy = -(out.log_probs.exp() * out.log_probs).sum(-1)
    return 1.0 - confidence, (frame_entropy * mask).sum(1) / n
