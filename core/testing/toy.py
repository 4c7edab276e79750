"""The toy task: a complete, tiny :class:`~activelab.protocol.Task` (Gaussian blobs, an MLP with dropout), fast
enough for unit tests and the loop's end-to-end tests, and a worked example of the protocol and its optional hooks
(registered by the core plugin as task ``toy``)."""
from __future__ import annotations

from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    FEATURES,
    MC,
    MC_DROPOUT,
    PROBS,
    TORCH_SEED_BOUND,
    Context,
    Env,
    ItemId,
    rng_for,
    seed_for,
)
from activelab.torchkit import ItemIndex, check, checkpoint, mc_dropout, restore, seeded


class ToyNet(nn.Module):
    """Two hidden layers with dropout; ``forward`` returns ``(logits, embedding)``, the embedding being the input
    of the linear head (what last-layer scorers such as EGL assume)."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.head(h), h


class ToyTask:
    """Classify Gaussian blobs (``sklearn.datasets.make_blobs``, centres evenly on a circle) with a small MLP.

    Item ids are ``"0" .. str(n_items - 1)``; a separate test split is used by :meth:`evaluate`. :meth:`fit`
    trains a fresh network full-batch for ``epochs`` Adam steps, seeded by ``(ctx.seed, ctx.round)``, so it is
    deterministic. :meth:`predict` yields chunks of ``chunk_size`` items, so chunking is always exercised.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_items: int = Field(300, ge=4, description="unlabelled pool size")
        n_test: int = Field(200, ge=1, description="held-out items for evaluate()")
        n_features: int = Field(2, ge=1)
        n_classes: int = Field(4, ge=2)
        radius: float = Field(2.5, gt=0.0, description="the blob centres lie evenly on a circle of this radius")
        cluster_std: float = Field(1.0, gt=0.0, description="spread of each blob")
        hidden: int = Field(32, ge=1)
        dropout: float = Field(0.2, ge=0.0, lt=1.0)
        epochs: int = Field(60, ge=0, description="full-batch Adam steps per fit")
        lr: float = Field(0.03, gt=0.0)
        chunk_size: int = Field(64, ge=1, description="items per predict() chunk")
        data_seed: int = 0

    outputs: Collection[str] = frozenset({PROBS, EMBEDDINGS, FEATURES, MC_DROPOUT, BOOTSTRAP})
    primary_metric = "accuracy"
    metrics = ("accuracy", "n_train", "train_accuracy")
    query_type = "pool"

    def __init__(self, config: Config | None = None, env: Env | None = None):
        from sklearn.datasets import make_blobs

        self.config = cfg = config or self.Config()
        self.env = env or Env()
        angle = 2 * np.pi * np.arange(cfg.n_classes) / cfg.n_classes
        centres = np.zeros((cfg.n_classes, cfg.n_features))
        centres[:, 0] = cfg.radius * np.cos(angle)
        centres[:, 1 % cfg.n_features] += cfg.radius * np.sin(angle)
        x, y = make_blobs(n_samples=cfg.n_items + cfg.n_test, centers=centres, cluster_std=cfg.cluster_std,
                          random_state=cfg.data_seed)
        x = (x - x[: cfg.n_items].mean(0)) / (x[: cfg.n_items].std(0) + 1e-8)
        self.device = torch.device(self.env.device)
        self.x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        self.y = torch.as_tensor(y, dtype=torch.long, device=self.device)
        self.items = ItemIndex(str(i) for i in range(cfg.n_items))
        self.model = self._train(seed_for(self.env.seed, "toy-init", below=TORCH_SEED_BOUND), [], [])
        self.members: list[ToyNet] = []

    # ------------------------------------------------------------------ training
    def _train(self, seed: int, idx: Sequence[int], targets: Sequence[int]) -> ToyNet:
        cfg = self.config
        with seeded(seed, self.device):
            model = self._new_model()
            if len(idx):
                x, y = self.x[list(idx)], torch.as_tensor(list(targets), dtype=torch.long, device=self.device)
                opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
                model.train()
                for _ in range(cfg.epochs):
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(x)[0], y).backward()
                    opt.step()
        return model.eval()

    def _new_model(self) -> ToyNet:
        cfg = self.config
        return ToyNet(cfg.n_features, cfg.hidden, cfg.n_classes, cfg.dropout).to(self.device)

    def _labelled(self, labels: Mapping[ItemId, Any]) -> tuple[list[int], list[int]]:
        items = sorted(labels, key=self.items.position)          # independent of the labels' order
        return [self.items.position(i) for i in items], [int(labels[i]) for i in items]

    @property
    def predict_batch_size(self) -> int:
        """The items of each chunk predict yields (hook): several processes split a query along them."""
        return self.config.chunk_size

    def pool_ids(self) -> Sequence[ItemId]:
        return list(self.items.ids)

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        idx, targets = self._labelled(labels)
        self.model = self._train(seed_for(ctx.seed, ctx.round, "toy-fit", below=TORCH_SEED_BOUND), idx, targets)
        self.members = []                       # a committee of the previous model's round is stale now
        if not idx:
            return {"n_train": 0}
        with torch.inference_mode():
            hits = self.model(self.x[idx])[0].argmax(1).cpu() == torch.tensor(targets)
        return {"n_train": len(idx), "train_accuracy": float(hits.float().mean())}

    def fit_bootstrap(self, labels: Mapping[ItemId, Any], size: int, seed: int) -> None:
        """Train ``size`` committee members, member b on a bootstrap resample of the labels drawn with
        ``rng_for(seed, "bootstrap", b)``; :meth:`predict` with ``MC(mode="bootstrap")`` then uses them."""
        idx, targets = self._labelled(labels)
        self.members = []
        for b in range(size):
            take = rng_for(seed, "bootstrap", b).integers(len(idx), size=len(idx)) if idx else np.zeros(0, int)
            self.members.append(self._train(seed_for(seed, "bootstrap-init", b, below=TORCH_SEED_BOUND),
                                            [idx[t] for t in take], [targets[t] for t in take]))

    # ------------------------------------------------------------------ inference
    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        rows = self.items.positions(ids)     # no lookup when the ids travel as positions (Candidates)
        if mc is not None and mc.mode == "bootstrap" and mc.samples > len(self.members):
            raise ValueError(f"MC(mode='bootstrap', samples={mc.samples}) but fit_bootstrap made "
                             f"{len(self.members)} members")
        step = self.config.chunk_size
        for n, start in enumerate(range(0, len(rows), step)):
            x = self.x[rows[start:start + step]]
            with torch.inference_mode():
                if mc is None:
                    passes = [self.model(x)]
                elif mc.mode == "bootstrap":
                    passes = [member(x) for member in self.members[: mc.samples]]
                else:
                    with mc_dropout(self.model, mc.mode, mc.seed, chunk=mc.chunk + n) as drop:
                        passes = [self.model(x) for _ in drop.members(mc.samples)]
                out = {PROBS: torch.stack([p[0] for p in passes]).softmax(-1),
                       EMBEDDINGS: torch.stack([p[1] for p in passes])}
            chunk = {k: (v if mc is not None else v[0]).cpu().numpy() for k, v in out.items() if k in want}
            if FEATURES in want:                 # the label-free representation: the standardised inputs
                chunk[FEATURES] = x.cpu().numpy()
            yield chunk

    def evaluate(self) -> Mapping[str, float]:
        n = self.config.n_items
        with torch.inference_mode():
            pred = self.model(self.x[n:])[0].argmax(1)
        return {"accuracy": float((pred == self.y[n:]).float().mean())}

    # ------------------------------------------------------------------ labels
    cost_unit = "seconds"

    def label_cost(self, ids: Sequence[ItemId], labels: Sequence[Any] | None = None) -> np.ndarray:
        """A made-up cost (1, 2 or 3 "seconds" by pool position, whatever the answer), so that cost-aware
        strategies and the loop's ``cost`` column can be exercised on the toy task."""
        return 1.0 + np.asarray(self.items.positions(ids)) % 3

    def true_label(self, item_id: ItemId) -> int:
        return int(self.y[self.items.position(item_id)])

    def check_label(self, item_id: ItemId, value: Any) -> int:
        self.items.check(item_id)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"label must be a class number 0..{self.config.n_classes - 1}, got {value!r}")
        if not 0 <= int(value) < self.config.n_classes:
            raise ValueError(f"label must be a class number 0..{self.config.n_classes - 1}, got {value}")
        return int(value)

    def label_schema(self) -> dict[str, Any]:
        return {"type": "choices", "choices": [str(c) for c in range(self.config.n_classes)]}

    def suggest(self, ids: Sequence[ItemId]) -> list[int]:
        """The model's most probable class per item."""
        return [int(c) for chunk in self.predict(ids, {PROBS}) for c in chunk[PROBS].argmax(1)]

    def corrupt_label(self, value: Any, rng: np.random.Generator) -> int:
        """A wrong class, uniformly among the others."""
        c = self.config.n_classes
        return (int(value) + 1 + int(rng.integers(c - 1))) % c

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        point = [round(float(v), 3) for v in self.x[self.items.position(item_id)].tolist()]
        return {"text": f"point {item_id} at {point}: which blob (0..{self.config.n_classes - 1})?", "features": point}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return checkpoint(matches={"pool_size": len(self.items)}, model=self.model, members=self.members)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check(state, {"pool_size": len(self.items)})
        self.model = restore(self._new_model(), state["model"]).eval()
        self.members = [restore(self._new_model(), weights, f"bootstrap member {b}").eval()
                        for b, weights in enumerate(state.get("members", []))]
