"""Local Hugging Face CTC checkpoints for the recognition task (``task.params.model: {kind: huggingface, path:
DIR}``): wav2vec 2.0, HuBERT, WavLM and the other ``*ForCTC`` models that read the raw waveform, with their
feature extractor and character vocabulary. Nothing is downloaded: every load is ``local_files_only``.

:class:`CTCCheckpoint` opens and checks a folder once (cheap: configs and the vocabulary, no weights). Each
problem is a one-line :class:`~activelab.errors.UserError` that starts with the recipe field and names the folder:
transformers not installed, the folder missing, no ``config.json``, a checkpoint of another kind (a seq2seq
translator, an audio classifier, a pretrained encoder without a CTC head), a model that reads log-mel features
instead of the waveform, missing feature-extractor or tokenizer files, a tokenizer whose size differs from the
CTC output layer's, no weights file.

Transcripts: the task normalises them (lower case, single spaces: :func:`.data.normalise_transcript`);
:meth:`CTCCheckpoint.spell` maps them onto the checkpoint's vocabulary (a space is the word delimiter ``|``; a
letter is taken as it is, else in upper case, as wav2vec2-base-960h's upper-case vocabulary has it) and
:meth:`CTCCheckpoint.decode` maps token ids back to the normalised form. The CTC blank is the model's pad token,
as transformers' own CTC loss has it.

:class:`PretrainedCTC` wraps the transformers model for the task: waveforms (B, S) with sample counts in, the
task's :class:`~.model.Forward` out (CTC log-probabilities, output frames, the two predicted losses), with the
loss-prediction module (Yoo & Kweon) reading mean-pooled hidden states at ``taps`` depths
(``output_hidden_states``). The fine-tuned weights live in the task's checkpoint (its ``state_dict``); the
user's folder is only ever read.
"""
from __future__ import annotations

import copy
import functools
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from activelab.errors import UserError
from activelab.torchkit.pretrained import WEIGHTS, first_line, has_weights, quiet, require_transformers

from .model import Forward, LossPredictionModule, lengths_mask

FIELD = "task.params.model"
INSTALL = "pip install 'activelab[speech]'"
# CTC families that read the waveform, with a Transformer encoder at the frame rate of their feature encoder
FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat", "wav2vec2-conformer")
FEATURE_FILES = ("preprocessor_config.json", "processor_config.json")


def _load(*, what: str, where: str, loaders: tuple, path: Path):
    """The first of ``loaders`` that loads from ``path``; the first one's error when none does."""
    first: Exception | None = None
    for loader in loaders:
        try:
            return loader.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:     # OSError, ValueError, TypeError, JSON errors, ...
            first = first or exc
    raise UserError(f"{where}: cannot load {what} ({first_line(first)})") from None


def tap_indices(states: int, taps: int) -> list[int]:
    """``taps`` indices into ``states`` hidden states (the encoder's input, then each layer's output), spread
    evenly from the first to the last (fewer when there are fewer states)."""
    if taps <= 1 or states <= 1:
        return [states - 1]
    return sorted({round(i * (states - 1) / (taps - 1)) for i in range(taps)})


class CTCCheckpoint:
    """A checked checkpoint folder: its config, feature extractor, tokenizer and the character mapping."""

    def __init__(self, path: Path | str):
        transformers = require_transformers(FIELD, INSTALL)
        from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

        path = Path(path).expanduser()
        self.path = path
        where = f"{FIELD}.path: {path}"
        if not path.is_dir():
            raise UserError(f"{where}: folder does not exist")
        if not (path / "config.json").is_file():
            raise UserError(f"{where}: no config.json, not a transformers checkpoint folder")
        with quiet():
            try:
                config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
            except Exception as exc:     # an unknown model type, broken JSON, ...
                raise UserError(f"{where}: cannot read config.json ({first_line(exc)})") from None
        architectures = list(getattr(config, "architectures", None) or [])
        shown = architectures[0] if architectures else f"{config.model_type} model"
        if config.model_type in MODEL_FOR_CTC_MAPPING_NAMES and config.model_type not in FAMILIES:
            raise UserError(f"{where}: a {shown} checkpoint: not supported here (supported: "
                            f"{', '.join(FAMILIES)})")
        if config.model_type not in MODEL_FOR_CTC_MAPPING_NAMES:
            raise UserError(f"{where}: a {shown} checkpoint, not a CTC speech recogniser (expected a *ForCTC "
                            f"checkpoint: wav2vec2, hubert, wavlm, ...)")
        if architectures and not any(a.endswith("ForCTC") for a in architectures):
            raise UserError(f"{where}: a {shown} checkpoint, not a CTC speech recogniser: it has no CTC output "
                            f"layer over characters (expected {MODEL_FOR_CTC_MAPPING_NAMES[config.model_type]}, "
                            f"e.g. wav2vec2-base-960h)")
        if not any((path / f).is_file() for f in FEATURE_FILES):
            raise UserError(f"{where}: no preprocessor_config.json (the feature extractor: sampling rate, "
                            f"normalisation); save the processor into the folder (processor.save_pretrained)")
        if not (path / "vocab.json").is_file():
            raise UserError(f"{where}: no vocab.json (the CTC tokenizer's character vocabulary); save the "
                            f"processor or tokenizer into the folder (processor.save_pretrained)")
        if not has_weights(path):
            raise UserError(f"{where}: no weights file ({', '.join(WEIGHTS)})")
        # the Auto classes, else the classes every supported family uses (a tokenizer_config.json without a
        # tokenizer_class, as some hub folders have it, leaves AutoTokenizer to guess from the model type)
        with quiet():
            extractor = _load(what="the feature extractor", where=where, loaders=(
                transformers.AutoFeatureExtractor, transformers.Wav2Vec2FeatureExtractor), path=path)
            tokenizer = _load(what="the tokenizer", where=where, loaders=(
                transformers.AutoTokenizer, transformers.Wav2Vec2CTCTokenizer), path=path)
        inputs = list(getattr(extractor, "model_input_names", None) or ["input_values"])
        if inputs[0] != "input_values":
            raise UserError(f"{where}: a {shown} reads {inputs[0]} (computed features), not the raw waveform; "
                            f"only waveform CTC models (wav2vec2, hubert, wavlm, ...) are supported")
        vocab = tokenizer.get_vocab()
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise UserError(f"{where}: vocab.json's token ids are not 0..{len(vocab) - 1}")
        if len(vocab) != config.vocab_size:
            raise UserError(f"{where}: the tokenizer has {len(vocab)} tokens but the model's CTC output layer has "
                            f"{config.vocab_size} (config.json vocab_size): vocab.json does not belong to this "
                            f"model")
        blank = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
        if blank is None or not 0 <= blank < len(vocab):
            raise UserError(f"{where}: no pad token to serve as the CTC blank (config.json pad_token_id)")
        self.config = config
        self.extractor = extractor
        self.tokenizer = tokenizer
        self.kind = architectures[0] if architectures else MODEL_FOR_CTC_MAPPING_NAMES[config.model_type]
        self.sample_rate = int(extractor.sampling_rate)
        self.padding_value = float(getattr(extractor, "padding_value", 0.0))
        # models with a group-normalised first convolution (wav2vec2-base) were trained on zero-padded batches
        # without a mask; their feature extractor says so
        self.attention_mask = bool(getattr(extractor, "return_attention_mask", True))
        self.blank = int(blank)
        self.tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        delimiter = getattr(tokenizer, "word_delimiter_token", None)
        specials = {vocab[t] for t in tokenizer.all_special_tokens if t in vocab} | {self.blank}
        self.delimiter = vocab.get(delimiter) if delimiter in vocab else vocab.get(" ")
        specials.discard(self.delimiter)
        self._ids = {t: i for t, i in vocab.items() if len(t) == 1 and i not in specials and i != self.delimiter}
        if self.delimiter is not None:
            self._ids[" "] = self.delimiter
        self._text = {i: ("" if i in specials else " " if i == self.delimiter else t.lower())
                      for i, t in enumerate(self.tokens)}

    # ------------------------------------------------------------------------------------------ characters
    def _id(self, char: str) -> int | None:
        found = self._ids.get(char)
        return found if found is not None else self._ids.get(char.upper())

    def missing(self, text: str) -> list[str]:
        """The characters of ``text`` (normalised) the vocabulary cannot spell, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if self._id(c) is None))

    def spell(self, text: str) -> list[int]:
        """Token ids of a normalised transcript (a character the vocabulary lacks is dropped: check with
        :meth:`missing` first)."""
        return [i for i in map(self._id, text) if i is not None]

    def decode(self, ids: list[int]) -> str:
        """The normalised transcript of CTC-collapsed token ids (blanks removed)."""
        from .data import normalise_transcript
        return normalise_transcript("".join(self._text.get(i, "") for i in ids))

    def describe_missing(self, chars: list[str]) -> str:
        return ", ".join("space" if c == " " else json.dumps(c, ensure_ascii=False) for c in chars)

    # ------------------------------------------------------------------------------------------ audio
    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """The feature extractor's input values of one waveform (at :attr:`sample_rate`): (S,) float32."""
        out = self.extractor(wave.numpy(), sampling_rate=self.sample_rate, return_tensors="np")
        return torch.from_numpy(out["input_values"][0]).to(torch.float32).contiguous()

    # ------------------------------------------------------------------------------------------ the model
    def load(self, pretrained: bool = True) -> nn.Module:
        """The transformers model in float32: the folder's weights (``pretrained``), or its architecture with
        fresh weights to restore a checkpoint into (no weights read)."""
        transformers = require_transformers(FIELD, INSTALL)
        with quiet():
            if not pretrained:
                return transformers.AutoModelForCTC.from_config(copy.deepcopy(self.config), dtype=torch.float32)
            try:
                net, info = transformers.AutoModelForCTC.from_pretrained(
                    str(self.path), local_files_only=True, dtype=torch.float32, output_loading_info=True)
            except Exception as exc:
                raise UserError(f"{FIELD}.path: {self.path}: cannot load the weights ({first_line(exc)})") from None
        fresh = sorted(info.get("missing_keys", ())) + sorted(k for k, *_ in info.get("mismatched_keys", ()))
        if fresh:
            more = f" (+{len(fresh) - 3} more)" if len(fresh) > 3 else ""
            raise UserError(f"{FIELD}.path: {self.path}: the weights lack {', '.join(fresh[:3])}{more}: not a "
                            f"complete {self.kind} checkpoint")
        return net


class PretrainedCTC(nn.Module):
    """A transformers CTC model with the loss-prediction module on its hidden states: waveforms (B, S) and their
    sample counts in, :class:`~.model.Forward` out."""

    def __init__(self, net: nn.Module, taps: int, loss_hidden: int | None, attention_mask: bool, blank: int):
        super().__init__()
        self.net = net
        self.blank = blank
        states = int(net.config.num_hidden_layers) + 1
        self.taps = tap_indices(states, taps)
        self.attention_mask = attention_mask
        self.loss_module = (LossPredictionModule([int(net.config.hidden_size)] * len(self.taps), loss_hidden,
                                                 outputs=2) if loss_hidden else None)
        # the hidden states are read by hooks: the encoder's input to its first layer (the output of its dropout,
        # the last step before the layers in every supported family) and each layer's output. LayerDrop (training)
        # skips layers, for which transformers 5 returns no hidden state; a skipped layer's output is its input.
        encoder = net.base_model.encoder
        self._states: dict[int, torch.Tensor] = {}
        encoder.dropout.register_forward_hook(functools.partial(self._record, 0))
        for i, layer in enumerate(encoder.layers):
            layer.register_forward_hook(functools.partial(self._record, i + 1))

    def _record(self, index: int, module: nn.Module, inputs, output) -> None:
        if self._capture:
            self._states[index] = output[0] if isinstance(output, tuple) else output

    _capture = False

    def encode(self, waves: torch.Tensor, samples: torch.Tensor, states: bool = True
               ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The CTC logits (B, T', V) and, with ``states``, the hidden states: the input of the first layer and
        every layer's output (B, T', D), a layer LayerDrop skipped giving its input."""
        mask = lengths_mask(samples, waves.shape[1]).long() if self.attention_mask else None
        self._states, self._capture = {}, states
        try:
            with warnings.catch_warnings():     # WavLM's attention under torch 2.14, harmless
                warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
                logits = self.net(input_values=waves, attention_mask=mask, return_dict=True).logits
        finally:
            captured, self._states, self._capture = self._states, {}, False
        if not states:
            return logits, None
        hidden = [captured[0]]
        for i in range(1, int(self.net.config.num_hidden_layers) + 1):
            hidden.append(captured.get(i, hidden[-1]))
        return logits, hidden

    def frames(self, samples: torch.Tensor, adapter: bool = True) -> torch.Tensor:
        """Output frames of the convolutional feature encoder (and of the adapter, when the model has one)."""
        lengths = self.net._get_feat_extract_output_lengths
        if getattr(self.net.config, "add_adapter", False):
            return lengths(samples, add_adapter=adapter)
        return lengths(samples)

    def forward(self, waves: torch.Tensor, samples: torch.Tensor, detach_taps: bool = False) -> Forward:
        logits, states = self.encode(waves, samples, states=self.loss_module is not None)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        frames = self.frames(samples).clamp(1, log_probs.shape[1]).long()
        if self.loss_module is None:
            predicted = log_probs.new_zeros(len(log_probs), 2)
        else:
            taps = [states[i] for i in self.taps]
            tap_frames = self.frames(samples, adapter=False).clamp(1, taps[0].shape[1]).long()
            predicted = self.loss_module([t.detach() if detach_taps else t for t in taps], tap_frames)
        return Forward(log_probs, frames, predicted, self.blank)

    def feature_encoder(self) -> nn.Module | None:
        """The convolutional feature encoder (the waveform's first layers), or None when the model has none."""
        return getattr(self.net.base_model, "feature_extractor", None)

    def freeze_feature_encoder(self) -> None:
        encoder = self.feature_encoder()
        if encoder is None:
            raise UserError(f"{FIELD}.freeze_feature_encoder: this {type(self.net).__name__} has no convolutional "
                            f"feature encoder; set it to false")
        if hasattr(self.net, "freeze_feature_encoder"):
            self.net.freeze_feature_encoder()
        for p in encoder.parameters():
            p.requires_grad_(False)
