"""Your own checkpoint: the translation task on a local Hugging Face ``transformers`` seq2seq model.

``task.params.model: {kind: huggingface, path: DIR}`` loads the folder ``save_pretrained`` wrote (or a Hub
download copied from elsewhere) with ``AutoModelForSeq2SeqLM`` and ``AutoTokenizer``, ``local_files_only``: nothing
is downloaded. Any family those classes load works: MarianMT (``Helsinki-NLP/opus-mt-*``), T5 (set ``prefix``,
e.g. ``"translate English to German: "``), mBART-50, NLLB and M2M100 (set ``source_lang``/``target_lang`` to the
tokenizer's language codes, e.g. ``eng_Latn``/``deu_Latn``; the target code is forced as the first generated token),
multilingual Marian models (``prefix: ">>deu<< "``).

- Fine-tuning: every weight of the model, with the task's optimiser settings (default lr 5e-5), each round from
  the checkpoint's weights (``restart_each_round: true``, the default) or from the previous round's.
  The loss is the model's next-token cross-entropy with the task's label smoothing; decoder inputs are the
  labels shifted right the model's own way (``prepare_decoder_input_ids_from_labels``).
- Decoding: the model's own ``generate`` (``beam_size`` beams, no sampling), at most ``max_decode`` new tokens
  (default ``2 x source + 10``, at most ``max_len``). The NLL the scorers use is that of the model's own decode.
- MC dropout: these models apply dropout functionally (``F.dropout(x, p, training=self.training)``), which the
  core's :func:`~activelab.torchkit.mc_dropout` (it switches ``nn.Dropout`` modules) would not reach.
  :func:`functional_mc_dropout` puts the model in train mode and, within the block only, routes every
  ``torch.nn.functional.dropout`` call (``nn.Dropout`` modules included) through the core's seeded masks, so both
  MC modes mean what they mean for the own Transformer (``dropout``: a fresh mask per item and pass;
  ``batchwise``: one mask per member and dropout site, the same for every item); attention runs in its eager
  implementation there so that attention dropout goes through the same masks.
- Checkpoints: the task's state holds the fine-tuned weights (and the optimiser's state when rounds continue);
  the folder is never written. It must stay as it was: a SHA-256 over its files (``*.json``, weights,
  tokenizer models) is part of the state, so a run does not resume on a changed checkpoint.

Every problem with the folder is a one-line :class:`~activelab.errors.UserError` naming ``task.params.model.path``,
the folder and what is wrong: missing, not a checkpoint (no config.json), a model of another kind (a classifier),
no weights, no tokenizer, a tokenizer whose vocabulary does not fit the model's embeddings, an unknown language
code; and ``transformers`` not installed names the extra to install.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from activelab.errors import UserError
from activelab.recipe import DataPath
from activelab.torchkit import seeded
from activelab.torchkit.dropout import MODES, MCDropout
from activelab.torchkit.pretrained import WEIGHTS, fingerprint, first_line, has_weights, quiet, require_transformers

FIELD = "task.params.model"
INSTALL = "pip install 'activelab[nlp]'"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "source.spm", "target.spm",
                   "sentencepiece.bpe.model", "sentencepiece.model", "tokenizer.model", "vocab.json", "vocab.txt")
# heads for other tasks: a checkpoint whose architectures are all of these is not a translation model
OTHER_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice",
               "ForCausalLM", "ForMaskedLM", "ForCTC", "ForImageClassification", "ForAudioClassification")


class HFModelConfig(BaseModel):
    """A local ``transformers`` seq2seq checkpoint, fine-tuned each round (see :mod:`activelab.plugins.nlp.hf`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["huggingface"] = Field(description="huggingface: a local transformers checkpoint, fine-tuned")
    path: DataPath = Field(description="checkpoint folder (save_pretrained or a Hub download): config.json, "
                                       "weights, tokenizer files")
    source_lang: str | None = Field(None, description="tokenizer source language code (mBART-50, NLLB, M2M100: "
                                                      "e.g. en_XX, eng_Latn)")
    target_lang: str | None = Field(None, description="tokenizer target language code, forced as the first "
                                                      "generated token (e.g. de_DE, deu_Latn)")
    prefix: str = Field("", description="text put before every source sentence (T5: 'translate English to "
                                        "German: '; multilingual Marian: '>>deu<< ')")
    beam_size: int = Field(1, ge=1, description="beams of generate (1 = greedy)")
    max_len: int = Field(128, ge=4, description="tokens per sentence, special tokens included; longer ones are cut")
    dropout: float | None = Field(None, ge=0, lt=1, description="replace the checkpoint's dropout (MC dropout "
                                                                "needs one above 0)")
    restart_each_round: bool = Field(True, description="each round fine-tunes from the checkpoint's weights; "
                                                       "false: continue from the previous round's")


@contextmanager
def functional_mc_dropout(model: nn.Module, mode: str = "dropout", seed: int = 0,
                          chunk: int = 0) -> Iterator[MCDropout]:
    """MC dropout for a model that calls ``torch.nn.functional.dropout`` itself (see the module doc).

    Within the block the model is in train mode (its functional dropout is active) and every dropout call draws
    its keep-mask from a :class:`~activelab.torchkit.dropout.MCDropout`, as :func:`activelab.torchkit.mc_dropout`
    does for ``nn.Dropout`` modules: dropout call number ``k`` of a forward pass is "dropout site" ``k`` (the
    count restarts with each forward of ``model``). Other train-mode randomness (layer drop) comes from
    torch's generators, seeded by ``seed`` within the block. On exit the function, the attention implementation
    and every module's mode are restored. ``torch.nn.functional.dropout`` is patched process-wide while the block
    is open: keep other models' forward passes out of it. Raises ``ValueError`` for an unknown mode, and a
    :class:`UserError` at the end of a block in which no dropout with p > 0 was applied (every pass would be the
    same: the checkpoint's dropout is 0)."""
    if mode not in MODES:
        raise ValueError(f"functional_mc_dropout: mode must be one of {', '.join(MODES)}, got {mode!r}")
    state = MCDropout(mode, seed, 0, chunk)
    calls = [0, 0]                    # dropout site of the current forward pass; masks applied in the block
    sites: dict[float, nn.Dropout] = {}
    original = F.dropout

    def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if not training or p == 0.0:
            return original(input, p, training, inplace)
        index = calls[0]
        calls[0] += 1
        calls[1] += 1
        if p >= 1.0:
            return torch.zeros_like(input)
        module = sites.setdefault(float(p), nn.Dropout(float(p)))
        return input * state.mask(index, module, input) / (1.0 - p)

    def restart(*_: Any) -> None:
        calls[0] = 0

    modes = [(m, m.training) for m in model.modules()]
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    hook = model.register_forward_pre_hook(restart)
    try:
        if attention not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        model.train()
        F.dropout = dropout
        with seeded(state.seed):
            yield state
    finally:
        F.dropout = original
        hook.remove()
        if attention not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(attention)
        for module, training in modes:
            module.training = training
    if calls[1] == 0:
        raise UserError(f"{FIELD}.dropout: the checkpoint's dropout is 0, so MC dropout passes would all be the same; "
                        f"set {FIELD}.dropout (e.g. 0.1) or use a scorer without MC dropout")


def _pad_rows(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), right-padded with ``pad``."""
    width = max(max((len(r) for r in rows), default=1), 1)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


class HFSeq2Seq:
    """The translation task's model operations for a local ``transformers`` checkpoint.

    Token sequences: a source is its token ids (prefix and special tokens included); a decode ("hypothesis") is
    the row ``generate`` returned, cut after its first end-of-sentence token: the decoder's start token, the
    tokens, EOS (a forced language code included, where the family has one).
    """

    def __init__(self, cfg: HFModelConfig, device: torch.device):
        require_transformers(FIELD, INSTALL)
        self.cfg = cfg
        self.device = device
        self.path = Path(cfg.path).expanduser()
        self.config = self._load_config()
        self.tokenizer = self._load_tokenizer()
        self.fingerprint = fingerprint(self.path)
        generation = self._generation_config()
        self.start = self._first(generation.decoder_start_token_id, self.config.decoder_start_token_id)
        eos = self._first(generation.eos_token_id, self.config.eos_token_id, self.tokenizer.eos_token_id)
        self.eos = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        self.pad = self._first(self.tokenizer.pad_token_id, generation.pad_token_id, self.config.pad_token_id)
        missing = [name for name, value in (("decoder_start_token_id", self.start), ("eos_token_id", eos),
                                            ("pad_token_id", self.pad)) if value is None]
        if missing:
            raise UserError(f"{FIELD}.path: {self.path}: the checkpoint sets no {', '.join(missing)} "
                            f"(config.json or generation_config.json)")
        self.forced_bos = self._language_id(cfg.target_lang, "target_lang") if cfg.target_lang else None

    @staticmethod
    def _first(*values: Any) -> Any:
        return next((v for v in values if v is not None), None)

    # ------------------------------------------------------------------------------------------ loading
    def _load_config(self):
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES as SEQ2SEQ

        where = f"{FIELD}.path: {self.path}"
        if not self.path.exists():
            raise UserError(f"{where} not found (a checkpoint folder: config.json, weights and tokenizer files)")
        if not self.path.is_dir():
            raise UserError(f"{where} is not a folder (a checkpoint folder, as save_pretrained writes)")
        if not (self.path / "config.json").is_file():
            raise UserError(f"{where} has no config.json: not a transformers checkpoint folder")
        try:
            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{where}: cannot read config.json: {first_line(exc)}") from None
        architectures = list(getattr(config, "architectures", None) or [])
        held = f"a {'/'.join(architectures)} ({config.model_type})" if architectures else f"a {config.model_type} model"
        other_head = architectures and all(a.endswith(OTHER_HEADS) for a in architectures)
        if config.model_type not in SEQ2SEQ or other_head:
            raise UserError(f"{where} holds {held}, not a sequence-to-sequence model: kind huggingface needs a "
                            f"translation checkpoint that AutoModelForSeq2SeqLM loads (MarianMT, T5, mBART, NLLB, ...)")
        if not has_weights(self.path):
            raise UserError(f"{where} has no model weights ({' or '.join(WEIGHTS[::2])})")
        if self.cfg.dropout is not None:
            for name in ("dropout", "dropout_rate"):         # BART/Marian/M2M100 family; T5
                if hasattr(config, name):
                    setattr(config, name, self.cfg.dropout)
        return config

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        where = f"{FIELD}.path: {self.path}"
        present = [name for name in TOKENIZER_FILES if (self.path / name).is_file()]
        if not present:
            raise UserError(f"{where} has no tokenizer files (tokenizer.json, or the family's own: source.spm, "
                            f"spiece.model, sentencepiece.bpe.model, ...): copy them from where the model came from")
        try:
            with quiet():
                tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except ImportError as exc:
            if "sentencepiece" in str(exc).lower():      # MarianTokenizer, and slow tokenizers without tokenizer.json
                raise UserError(f"{where}: its tokenizer needs the sentencepiece package: pip install sentencepiece") \
                    from None
            raise UserError(f"{where}: its tokenizer needs a package that is not installed: {first_line(exc)}") \
                from None
        except Exception as exc:        # transformers raises ValueError, OSError, TypeError, ... for broken files
            hint = "" if "tokenizer.json" in present else " (no tokenizer.json)"
            raise UserError(f"{where}: cannot load its tokenizer from {', '.join(present)}{hint}: "
                            f"{first_line(exc)}") from None
        if self.cfg.source_lang:
            if not hasattr(tokenizer, "src_lang"):
                raise UserError(f"{FIELD}.source_lang: the tokenizer at {self.path} ({type(tokenizer).__name__}) has "
                                f"no source language setting; use {FIELD}.prefix for families that need one")
            self._language_id(self.cfg.source_lang, "source_lang", tokenizer)
            tokenizer.src_lang = self.cfg.source_lang
        if self.cfg.target_lang and hasattr(tokenizer, "tgt_lang"):
            tokenizer.tgt_lang = self.cfg.target_lang
        return tokenizer

    def _language_id(self, code: str, field: str, tokenizer: Any = None) -> int:
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        token = tokenizer.convert_tokens_to_ids(code)
        if token is not None and token != tokenizer.unk_token_id:
            return int(token)
        get_lang_id = getattr(tokenizer, "get_lang_id", None)       # M2M100: "de" -> "__de__"
        if get_lang_id is not None:
            try:
                return int(get_lang_id(code))
            except (KeyError, ValueError):
                pass
        raise UserError(f"{FIELD}.{field}: {code!r} is not a language code of the tokenizer at {self.path}")

    def _generation_config(self):
        from transformers import GenerationConfig

        if not (self.path / "generation_config.json").is_file():
            return GenerationConfig.from_model_config(self.config)
        try:
            return GenerationConfig.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{FIELD}.path: {self.path}: cannot read generation_config.json: {first_line(exc)}") \
                from None

    def new_model(self, seed: int) -> nn.Module:
        """The checkpoint's model in float32 on the device, in eval mode (``seed`` draws any weight the folder
        lacks, e.g. a head the checkpoint did not save)."""
        from transformers import AutoModelForSeq2SeqLM

        try:
            with seeded(seed), quiet():
                model = AutoModelForSeq2SeqLM.from_pretrained(self.path, config=self.config, local_files_only=True,
                                                              dtype=torch.float32)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise UserError(f"{FIELD}.path: {self.path}: cannot load the model: {first_line(exc)}") from None
        embeddings = model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > embeddings:
            raise UserError(f"{FIELD}.path: {self.path}: the tokenizer has {len(self.tokenizer)} tokens but the "
                            f"model's embeddings hold {embeddings}: the tokenizer belongs to another model")
        return model.to(self.device).eval()

    def matches(self, pool_size: int) -> dict[str, Any]:
        return {"pool_size": pool_size, "model": "huggingface", "checkpoint": self.fingerprint}

    # ------------------------------------------------------------------------------------------ tokens
    def encode_sources(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        texts = [self.cfg.prefix + t for t in texts]
        return [list(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.cfg.max_len)["input_ids"]]

    def encode_targets(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in
                self.tokenizer(text_target=list(texts), truncation=True, max_length=self.cfg.max_len)["input_ids"]]

    def detokenize(self, hyps: Sequence[Sequence[int]]) -> list[str]:
        return list(self.tokenizer.batch_decode([list(h) for h in hyps], skip_special_tokens=True))

    # ------------------------------------------------------------------------------------------ model
    def loss(self, model: nn.Module, sources: list[list[int]], targets: list[list[int]],
             label_smoothing: float) -> torch.Tensor:
        src, mask = _pad_rows(sources, self.pad, self.device)
        labels, valid = _pad_rows(targets, self.pad, self.device)
        labels = labels.masked_fill(valid == 0, -100)
        prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
        if prepare is not None:
            decoder_in = prepare(labels=labels)
        else:                              # shift right: the start token, then the labels but the last
            decoder_in = torch.cat([torch.full_like(labels[:, :1], self.start), labels[:, :-1]], dim=1)
            decoder_in = decoder_in.masked_fill(decoder_in == -100, self.pad)
        logits = model(input_ids=src, attention_mask=mask, decoder_input_ids=decoder_in, use_cache=False).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
                               label_smoothing=label_smoothing)

    def decode(self, model: nn.Module, sources: Sequence[Sequence[int]], max_decode: int | None) -> list[list[int]]:
        """The model's own translations (``generate`` with ``beam_size`` beams), as rows cut after EOS."""
        if not sources:
            return []
        src, mask = _pad_rows(sources, self.pad, self.device)
        limit = min(max_decode or 2 * src.shape[1] + 10, self.cfg.max_len)
        extra = {"forced_bos_token_id": self.forced_bos} if self.forced_bos is not None else {}
        out = model.generate(input_ids=src, attention_mask=mask, num_beams=self.cfg.beam_size, do_sample=False,
                             max_new_tokens=limit, max_length=None, decoder_start_token_id=self.start,
                             pad_token_id=self.pad, num_return_sequences=1, **extra)
        rows = []
        for row in out.tolist():
            end = next((k for k in range(1, len(row)) if row[k] in self.eos), len(row) - 1)
            rows.append(row[: end + 1])
        return rows

    def nll(self, model: nn.Module, sources: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]]) -> torch.Tensor:
        """Length-normalised NLL of each decode (every token after the start token, EOS included), in the
        model's current mode."""
        src, mask = _pad_rows(sources, self.pad, self.device)
        rows, valid = _pad_rows(hyps, self.pad, self.device)
        logits = model(input_ids=src, attention_mask=mask, decoder_input_ids=rows[:, :-1], use_cache=False).logits
        logp = logits.float().log_softmax(-1)
        token = -logp.gather(-1, rows[:, 1:, None])[..., 0]
        keep = valid[:, 1:].float()
        return (token * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def mc(self, model: nn.Module, mode: str, seed: int, chunk: int):
        return functional_mc_dropout(model, mode, seed, chunk=chunk)
