"""PAL: a stream-selection policy learnt by deep Q-learning (scorer ``pal``).

Fang, Li & Cohn, "Learning how to Active Learn: A Deep Reinforcement Learning Approach", EMNLP 2017 (official code
mengf1/PAL, read to understand; nothing of it is copied). Active learning on a stream is a Markov decision process:
items arrive one at a time; the state is what is known about the arriving item; the action is *ask* (the oracle
labels it and the model is retrained) or *skip*; the reward is the change of the model's score on held-out data
that the action caused (0 for a skip); an episode ends when the label budget is spent. A deep Q-network (DQN:
experience replay, a target network) learns the policy across many simulated episodes on a data set whose labels
are known, and the learnt policy is then used on another data set (the paper: on another language).

This module holds the policy (state features, Q-network, replay, the policy file) and its use in a round; the
learning, the ``activelab pal`` verb, is in :mod:`activelab.strategies.pal_learn`.

**State** (:func:`state_features`), for any task that ``predict``\\ s ``probs`` (and, by the learnt setting,
``features`` or ``embeddings``): the concatenation of

- the item's representation: the task's label-free ``features`` (default; the same every round), its
  ``embeddings`` (the current model's), or nothing (``representation: none``), as given by the task (the vision
  task's features are L2-normalised);
- the model's prediction: the class probabilities, sorted in decreasing order (default, ``probs: sorted``: the
  state then does not name classes, so it means the same on another data set), or in class order
  (``probs: classes``);
- its confidence: the largest probability and, an addition, the entropy divided by log C (both in [0, 1]).

Its width is ``feature_dim + C + 2``; the policy file records ``representation``, ``feature_dim``, ``C`` (the
number of classes) and ``probs``, and a task whose outputs differ is refused with one line naming the file and
what differs (:class:`PolicyMismatch`).

**Q-network** (:class:`QNetwork`): one hidden layer (``hidden`` = 256 units, ReLU) over the state, two outputs
Q(s, skip), Q(s, ask): the shape of the official code's last layers, which concatenate a sentence CNN (384), a CNN
over the marginals (20) and the confidence (1) into 256 ReLU units.

**Use** (scorer ``pal``, ``params: {policy: FILE}``): the score of an item is the policy's advantage
``Q(s, ask) - Q(s, skip)``, computed with the model of the previous round. Paired with the ``stream`` selector at
``threshold: 0`` the round is the paper's rule: items arrive in a random order and each is asked about when
``Q(ask) > Q(skip)``, until the round's budget is spent; the selector stops pulling scores then, so later items
are never predicted. Why a scorer and not a selector: the state needs the task's predictions, and in activelab only
a scorer talks to the task (and declares what it needs, which ``activelab validate`` checks); the selector stays the
generic stream. (With ``topk`` the advantage ranks the pool instead: not the paper's use.)

``mode: random_rate`` is the baseline "random asking at the same rate": the policy decides every arriving item as
above, then its ask/skip decisions are shuffled among the items of each predicted chunk (``ctx.rng("pal-random",
chunk)``), so as many random items are asked per arrival as the policy would ask, on the same stream (scores +1
for ask, -1 for skip). In activelab a skipped item stays in the pool, so random asking at any rate picks a uniformly
random subset of the arrivals: this baseline is the ``random`` scorer with a stream's arrival count.

A run pins its policy: the file's SHA-256 is written to ``<run>/pal_policy.json`` when the run first builds the
scorer and compared on every resume, so a policy file changed under a run is an error, not a silent switch.

**Deviations from the paper** (each a choice for a task-independent, CPU-sized version):

- the state uses the task's representation as given, not a CNN over word embeddings trained with the Q-network,
  and the probability vector instead of a CNN over per-token marginals (classification has one distribution per
  item); the normalised entropy is an addition to the confidence;
- a target network synced every ``target_every`` = 100 gradient steps (the method card; the official code declares
  100 but computes its targets with the online network); Huber loss (the code: squared error); Adam at 1e-3 (the
  code: 1e-6, for its large CNN trained over many more episodes);
- epsilon-greedy exploration annealed linearly from 1.0 to 0.05 over the first half of the episodes (the code's
  epsilon is 0: no exploration);
- rewards are held-out accuracy changes times ``reward_scale`` = 100 (accuracy points), with no terminal bonus
  (the code replaces the last reward by 100 x the final score);
- each episode starts from ``initial`` random labels fitted before the stream, as activelab's round 0 does (the
  paper: from no labels and a random model); the held-out set is carved from the labelled source, not a dev set;
- in use, activelab retrains after each round's batch, not after each asked item: within a round the states of
  later arrivals come from the round's model (``loop.batch: 1`` is the paper's setting); and a skipped item stays
  in the pool, where the paper's stream passes once. The policy is frozen in use (the paper's "batch" test); its
  "online" variant, which keeps learning on the target, is not offered; instead ``activelab pal learn --labels-from
  RUN [--init POLICY]`` learns, or fine-tunes a transferred policy, on the target's own labels.

**What transfers.** The sorted probabilities and the confidences mean the same on any classification data set with
the same number of classes. The representation transfers only when both tasks give the same kind and width AND the
coordinates mean the same: the paper's cross-lingual embeddings are one shared space. Two data sets' PCA features
of the same width (``recipes/pal_transfer_mnist.yaml``) pass the width check, but their axes are each data set's
own principal components: only distribution-level cues (how typical an item is) carry over, and a policy that
learnt to read specific coordinates is misled. ``representation: none`` keeps only the transferable part.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from activelab.errors import UserError
from activelab.protocol import EMBEDDINGS, FEATURES, PROBS, Context, Env, ItemId, Task
from activelab.recipe import DataPath
from activelab.run import atomic_write
from activelab.torchkit import seeded, snapshot

SKIP, ASK = 0, 1
POLICY_FORMAT = "activelab-pal-policy"
POLICY_VERSION = 1
PIN_FILE = "pal_policy.json"
#: ``representation`` setting -> the task output it reads (None: no representation in the state)
REPRESENTATIONS: dict[str, str | None] = {"features": FEATURES, "embeddings": EMBEDDINGS, "none": None}


class LearnConfig(BaseModel):
    """How ``activelab pal learn`` learns the policy (read from the recipe's ``scorer.params.learn``). The defaults
    are the official code's where it has one (hidden 256, gamma 0.99, replay 1,000, minibatch 32, 32 transitions
    before the first update, target sync every 100 steps) and small CPU-sized values elsewhere."""

    model_config = ConfigDict(extra="forbid")

    episodes: int = Field(20, ge=1, description="simulated episodes (each restarts the model and the stream)")
    budget: int = Field(30, ge=1, description="labels asked per episode; the episode ends when they are spent")
    initial: int = Field(10, ge=0, description="random labels each episode starts from, fitted before the stream "
                                               "(as a run's round 0)")
    heldout: int = Field(200, ge=1, description="reward heldout: items of the labelled source carved out once "
                                                "(seeded) whose accuracy change is the reward; never streamed")
    reward: Literal["heldout", "evaluate"] = Field(
        "heldout", description="heldout: the accuracy on the carved held-out items (needs class-index labels); "
                               "evaluate: the task's evaluate() primary metric (its own test split)")
    reward_scale: float = Field(100.0, gt=0, description="rewards are score changes times this (100: accuracy "
                                                         "points)")
    refit_every: int = Field(1, ge=1, description="refit the model after this many asks (1: after each, as the "
                                                  "paper; the reward comes with the refit)")
    max_stream: int | None = Field(None, ge=1, description="at most this many arrivals per episode (bounds an "
                                                           "episode of a policy that skips); default: the pool")
    representation: Literal["features", "embeddings", "none"] = Field(
        "features", description="the item representation in the state: the task's label-free features, its "
                                "model's embeddings, or none")
    probs: Literal["sorted", "classes"] = Field(
        "sorted", description="the probabilities in the state: sorted (names no class; transfers) or in class order")
    hidden: int = Field(256, ge=1, description="units of the Q-network's hidden layer")
    gamma: float = Field(0.99, ge=0, le=1, description="discount")
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate for the Q-network")
    batch_size: int = Field(32, ge=1, description="transitions per gradient step")
    replay: int = Field(1000, ge=1, description="replay memory: the newest transitions kept")
    learn_start: int = Field(32, ge=1, description="transitions stored before the first gradient step")
    target_every: int = Field(100, ge=1, description="gradient steps between syncs of the target network")
    epsilon_start: float = Field(1.0, ge=0, le=1, description="exploration rate of the first episode")
    epsilon_end: float = Field(0.05, ge=0, le=1, description="exploration rate after the annealing")
    explore_episodes: int | None = Field(None, ge=1, description="episodes over which epsilon falls linearly "
                                                                 "(default: half of episodes)")


# ------------------------------------------------------------------------------------------- the state
@dataclass(frozen=True)
class StateSpec:
    """What a policy's state is made of; recorded in its file and checked against the task that uses it."""

    representation: str        # "features" | "embeddings" | "none"
    feature_dim: int           # 0 for "none"
    n_classes: int
    probs: str                 # "sorted" | "classes"

    @property
    def dim(self) -> int:
        return self.feature_dim + self.n_classes + 2

    @property
    def output(self) -> str | None:
        return REPRESENTATIONS[self.representation]

    def wants(self) -> set[str]:
        return {PROBS} | ({self.output} if self.output else set())

    @classmethod
    def of(cls, chunk: Mapping[str, np.ndarray], representation: str, probs: str) -> "StateSpec":
        """The spec of a task's predicted chunk (its class count and representation width)."""
        output = REPRESENTATIONS[representation]
        dim = int(np.asarray(chunk[output]).reshape(len(chunk[PROBS]), -1).shape[1]) if output else 0
        return cls(representation, dim, int(np.asarray(chunk[PROBS]).shape[1]), probs)


def state_features(chunk: Mapping[str, np.ndarray], spec: StateSpec) -> np.ndarray:
    """``(B, spec.dim)`` float32 states of a predicted chunk: [representation, probabilities (sorted or in class
    order), max probability, entropy / log C]."""
    p = np.asarray(chunk[PROBS], dtype=np.float64)
    n = len(p)
    c = p.shape[1] if p.ndim == 2 else 0
    confidence = p.max(axis=1) if n else np.zeros(0)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1) / np.log(max(c, 2))
    ordered = -np.sort(-p, axis=1) if spec.probs == "sorted" else p
    parts = []
    if spec.output:
        parts.append(np.asarray(chunk[spec.output], dtype=np.float64).reshape(n, -1))
    parts += [ordered, confidence[:, None], entropy[:, None]]
    return np.concatenate(parts, axis=1).astype(np.float32)


class PolicyMismatch(UserError):
    """A policy file made for other task outputs (another number of classes, another representation width)."""


def check_fits(spec: StateSpec, found: StateSpec, where: str, task: str) -> None:
    """Refuse a task whose outputs do not give ``spec``'s state, naming the file and what differs (one line)."""
    differ = []
    if spec.n_classes != found.n_classes:
        differ.append(f"{spec.n_classes} classes in the policy, {found.n_classes} from the task")
    if spec.feature_dim != found.feature_dim:
        differ.append(f"{spec.representation} of {spec.feature_dim} dims in the policy, {found.feature_dim} from "
                      f"the task")
    if differ:
        raise PolicyMismatch(f"{where}: the PAL policy does not fit task '{task}': {'; '.join(differ)}")


# ------------------------------------------------------------------------------------------- the DQN
class QNetwork(nn.Module):
    """Q(s, .) for the two actions (index 0 skip, 1 ask): Linear(state, hidden), ReLU, Linear(hidden, 2)."""

    def __init__(self, state_dim: int, hidden: int = 256):
        super().__init__()
        self.hidden = nn.Linear(state_dim, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(state)))


class Replay:
    """Experience replay: the newest ``capacity`` transitions (s, a, r, s', terminal) in preallocated arrays (a ring
    buffer), sampled uniformly without replacement."""

    def __init__(self, capacity: int, state_dim: int):
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.next_states = np.zeros((capacity, state_dim), np.float32)
        self.terminals = np.zeros(capacity, bool)
        self.size = 0
        self.head = 0

    def add(self, state: np.ndarray, action: int, reward: float, next_state: np.ndarray, terminal: bool) -> None:
        i = self.head
        self.states[i], self.actions[i], self.rewards[i] = state, action, reward
        self.next_states[i], self.terminals[i] = next_state, terminal
        self.head = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        rows = rng.choice(self.size, size=min(n, self.size), replace=False)
        return (self.states[rows], self.actions[rows], self.rewards[rows], self.next_states[rows],
                self.terminals[rows])

    def state_dict(self) -> dict[str, Any]:
        keep = slice(0, self.size)
        return {"capacity": self.capacity, "size": self.size, "head": self.head,
                **{name: torch.from_numpy(getattr(self, name)[keep].copy())
                   for name in ("states", "actions", "rewards", "next_states", "terminals")}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        size = int(state["size"])
        if int(state["capacity"]) != self.capacity or size > self.capacity:
            raise ValueError(f"replay of capacity {state['capacity']} does not fit one of {self.capacity}")
        for name in ("states", "actions", "rewards", "next_states", "terminals"):
            getattr(self, name)[:size] = state[name].numpy()
        self.size, self.head = size, int(state["head"])


class DQN:
    """Deep Q-learning (Mnih et al. 2015) for the ask/skip decision.

    :meth:`update` takes one gradient step on a minibatch: the target is ``y = r`` for a terminal transition and
    ``y = r + gamma * max_a' Q_target(s', a')`` otherwise; the loss is the Huber loss (delta 1) between
    ``Q(s, a)`` and ``y``, averaged over the batch; Adam. The target network is a copy of the Q-network, synced
    every ``target_every`` gradient steps."""

    def __init__(self, state_dim: int, hidden: int = 256, gamma: float = 0.99, lr: float = 1e-3,
                 target_every: int = 100, seed: int = 0):
        with seeded(seed):
            self.q = QNetwork(state_dim, hidden)
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=lr)
        self.gamma, self.target_every = gamma, target_every
        self.steps = 0

    def advantage(self, states: np.ndarray) -> np.ndarray:
        """``Q(s, ask) - Q(s, skip)`` per state (float64)."""
        with torch.inference_mode():
            q = self.q(torch.as_tensor(states, dtype=torch.float32)).double()
        return (q[:, ASK] - q[:, SKIP]).numpy()

    def act(self, state: np.ndarray, epsilon: float, rng: np.random.Generator) -> tuple[int, bool]:
        """Epsilon-greedy: ``(action, greedy)``; a random action with probability ``epsilon`` (ties: skip)."""
        if rng.random() < epsilon:
            return int(rng.integers(2)), False
        return (ASK if self.advantage(state[None])[0] > 0 else SKIP), True

    def update(self, states: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_states: np.ndarray,
               terminals: np.ndarray) -> float:
        """One gradient step on a minibatch of transitions; returns the loss before the step."""
        s = torch.as_tensor(states, dtype=torch.float32)
        a = torch.as_tensor(actions, dtype=torch.int64)
        r = torch.as_tensor(rewards, dtype=torch.float32)
        s2 = torch.as_tensor(next_states, dtype=torch.float32)
        done = torch.as_tensor(terminals, dtype=torch.bool)
        with torch.no_grad():
            y = r + self.gamma * self.target(s2).max(dim=1).values * (~done).float()
        q = self.q(s).gather(1, a[:, None])[:, 0]
        loss = F.smooth_l1_loss(q, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        if self.steps % self.target_every == 0:
            self.target.load_state_dict(self.q.state_dict())
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"q": snapshot(self.q), "target": snapshot(self.target), "optimizer": snapshot(self.optimizer),
                "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(copy.deepcopy(dict(state["optimizer"])))
        self.steps = int(state["steps"])


# ------------------------------------------------------------------------------------------- the policy file
@dataclass
class Policy:
    """A learnt policy as read from its file: the state it expects, its Q-network, what made it, and its path."""

    spec: StateSpec
    net: QNetwork
    info: dict[str, Any]
    path: Path
    sha256: str

    def advantage(self, states: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            q = self.net(torch.as_tensor(states, dtype=torch.float32)).double()
        return (q[:, ASK] - q[:, SKIP]).numpy()


def save_policy(path: Path, q: QNetwork, spec: StateSpec, info: Mapping[str, Any]) -> None:
    """Write the policy file atomically: ``{format, version, spec, hidden, q, info}`` (plain values and tensors, so
    it loads with ``torch.load(weights_only=True)``)."""
    buf = io.BytesIO()
    torch.save({"format": POLICY_FORMAT, "version": POLICY_VERSION, "spec": asdict(spec),
                "hidden": q.hidden.out_features, "q": snapshot(q), "info": dict(info)}, buf)
    atomic_write(Path(path), buf.getvalue())


def load_policy(path: str | Path) -> Policy:
    """Read a policy file; a missing, unreadable or foreign file is a one-line :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no PAL policy file here; learn one with `activelab pal learn RECIPE`")
    data = path.read_bytes()
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:   # truncated, not a torch file, or holding more than plain values and tensors
        detail = "not written by torch.save, or truncated" if not zipfile.is_zipfile(io.BytesIO(data)) else \
            (str(exc).splitlines()[0][:120] or type(exc).__name__)
        raise UserError(f"{path}: not a readable PAL policy file ({detail})") from None
    if not isinstance(saved, dict) or saved.get("format") != POLICY_FORMAT:
        raise UserError(f"{path}: not a PAL policy file (no format '{POLICY_FORMAT}')")
    if saved.get("version") != POLICY_VERSION:
        raise UserError(f"{path}: PAL policy file version {saved.get('version')!r}; this activelab reads version "
                        f"{POLICY_VERSION}")
    try:
        spec = StateSpec(**saved["spec"])
        if spec.representation not in REPRESENTATIONS or spec.probs not in ("sorted", "classes"):
            raise ValueError(f"unknown state spec {saved['spec']}")
        net = QNetwork(spec.dim, int(saved["hidden"]))
        net.load_state_dict(saved["q"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: damaged PAL policy file ({str(exc).splitlines()[0][:120]})") from None
    return Policy(spec, net.eval(), dict(saved.get("info", {})), path, hashlib.sha256(data).hexdigest())


def pin_policy(run_dir: Path, policy: Policy) -> None:
    """Record the policy's SHA-256 in the run folder on first use; refuse a changed file on later ones."""
    pin = Path(run_dir) / PIN_FILE
    if pin.is_file():
        try:
            known = json.loads(pin.read_text())["sha256"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{pin}: damaged (it pins the run's PAL policy); restore it or start a new run") from None
        if known != policy.sha256:
            raise UserError(f"{policy.path}: the PAL policy changed since this run started (sha256 "
                            f"{policy.sha256[:12]} != {known[:12]}); restore it or start a new run")
        return
    if Path(run_dir).is_dir():
        atomic_write(pin, json.dumps({"policy": str(Path(policy.path).absolute()),
                                      "sha256": policy.sha256}).encode())


# ------------------------------------------------------------------------------------------- the scorer
class PALScorer:
    """The learnt policy's advantage ``Q(ask) - Q(skip)`` per candidate; pair it with ``selector: {name: stream,
    params: {threshold: 0}}`` for the paper's rule (see the module doc). ``mode: random_rate``: the policy's
    decisions shuffled within each chunk (+1 ask, -1 skip), the random-asking baseline at the policy's rate."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        policy: DataPath = Field(description="the policy file (`activelab pal learn` writes it)")
        mode: Literal["policy", "random_rate"] = Field(
            "policy", description="policy: the advantage Q(ask) - Q(skip); random_rate: random asks at the "
                                  "policy's rate on the same stream (a baseline)")
        learn: LearnConfig = Field(default_factory=LearnConfig, description=(
            "how `activelab pal learn` learns the policy on this recipe's task (not used when scoring)"))

    #: without a readable policy (``activelab validate`` before learning) only the probabilities are known needs
    needs: Collection[str] = frozenset({PROBS})

    def __init__(self, config: Config, env: Env | None = None):
        self.config = config
        env = env or Env()
        self.policy = load_policy(config.policy)
        self.needs = frozenset(self.policy.spec.wants())
        if env.run_dir is not None:
            pin_policy(env.run_dir, self.policy)

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        missing = sorted(set(self.needs) - set(task.outputs))
        if missing:
            raise UserError(f"{self.policy.path}: the PAL policy reads {', '.join(missing)}, which task "
                            f"'{type(task).__name__}' does not provide")
        return self._scores(task, candidates, ctx)

    def _scores(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        spec, checked = self.policy.spec, False
        chunks = task.predict(candidates, spec.wants())
        try:
            for n, chunk in enumerate(chunks):
                if not checked and len(chunk[PROBS]):
                    check_fits(spec, StateSpec.of(chunk, spec.representation, spec.probs), str(self.policy.path),
                               type(task).__name__)
                    checked = True
                advantage = self.policy.advantage(state_features(chunk, spec))
                if self.config.mode == "random_rate":
                    asks = ctx.rng("pal-random", n).permutation(advantage > 0)
                    advantage = np.where(asks, 1.0, -1.0)
                yield advantage
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
