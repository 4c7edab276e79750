"""Learning a PAL policy in simulation, and the ``activelab pal`` verb (see :mod:`activelab.strategies.pal`).

``activelab pal learn RECIPE [key=value ...] [--episodes N] [--out DIR] [--labels-from RUN] [--init POLICY]``
reads the recipe's task, oracle, seed and ``scorer.params.learn`` (the scorer must be ``pal``) and writes the policy
to ``scorer.params.policy`` (or ``DIR/policy.pt``). Beside the policy it keeps ``learning.pt`` (the learning state),
``episodes.jsonl`` (one line per episode) and ``source/`` (the task's run folder: caches such as the vision task's
features). ``activelab pal info POLICY`` prints what a policy file holds.

**An episode** (:class:`StreamEnvironment`, gym-like ``reset`` / ``step``):

1. the task's model is put back to its state as built (``load_state_dict`` of the state taken right after
   construction: the untrained model);
2. the stream: the source items less the held-out ones, in a random order drawn from (seed, episode); the first
   ``initial`` are labelled and fitted before anything is decided;
3. each arriving item's state is computed with the current model; the agent asks (epsilon-greedy on the
   Q-network) or skips; an ask takes the oracle's answer (the recipe's oracle: ``simulated`` answers
   ``task.true_label``, with its label noise if set) and, every ``refit_every`` asks, refits the task
   (``task.fit(labels, ctx)``, ``ctx.round`` = asks so far, ``ctx.seed`` from the episode) and scores it again;
4. the reward of a transition is ``reward_scale`` x (held-out score after - before) when it caused a refit, else 0;
5. the episode ends when ``budget`` labels were asked (or the stream, or ``max_stream`` arrivals, ran out; a refit
   owed for the last asks happens then).

The held-out score (``reward: heldout``) is the accuracy of ``argmax probs`` on ``heldout`` items carved once from
the labelled source (``rng_for(seed, "pal-heldout")``), never streamed, whose labels come from the oracle;
``reward: evaluate`` takes the task's ``evaluate()[primary_metric]`` (negated for a metric where lower is better).

Every transition goes into the replay memory and, once ``learn_start`` are stored, each step takes one gradient
step on a random minibatch (``DQN.update``).

**Resuming.** After every episode the learning state is written atomically to ``learning.pt``: the Q-network, the
target network, Adam's state, the step counter, the replay memory and the episodes' log. Every random number of an
episode (stream order, exploration, minibatches, the task's fits) is drawn from generators seeded by (seed,
episode), so there is no generator state to keep and a learning killed at any moment (``kill -9``) and started again
with the same command loses at most the episode under way and ends with the same policy, bit for bit on the CPU,
as one never interrupted. A folder holding the state of other settings (task, oracle, seed, ``learn`` less
``episodes``, ``--labels-from``, ``--init``) is refused; more ``--episodes`` than done continue the learning.

``--labels-from RUN`` learns on a run's committed labels instead of the task's ground truth (the paper's setting
of a target language with a little labelled data): the labelled items are the source, their stored labels the
oracle, and the held-out items are carved from them. ``--init POLICY`` starts the Q-network (and its target)
from a policy file of the same state (a transferred policy fine-tuned on the target).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from activelab import hooks
from activelab import recipe as recipes
from activelab.cli import Verb
from activelab.device import pick_device
from activelab.errors import UserError
from activelab.protocol import PROBS, Context, Env, ItemId, Label, Task, rng_for, seed_for
from activelab.run import STORE_FILE, atomic_write, lock, resolved_recipe

from .pal import (
    ASK,
    DQN,
    REPRESENTATIONS,
    LearnConfig,
    PALScorer,
    Replay,
    StateSpec,
    check_fits,
    load_policy,
    save_policy,
    state_features,
)

LEARNING_FORMAT = "activelab-pal-learning"
LEARNING_FILE = "learning.pt"
LOG_FILE = "episodes.jsonl"
LOOKAHEAD = 32      # arrivals whose states are predicted at once (again after each refit: the model changed)


# ------------------------------------------------------------------------------------------- the environment
class StreamEnvironment:
    """Stream-based active learning as an MDP on a task whose labels are known (see the module doc).

    ``answer(item)`` gives an item's label; ``universe`` the items that may be streamed or held out (default: the
    task's pool). ``reset(episode)`` returns the first state; ``step(action)`` returns ``(reward, next_state,
    terminal)`` (the next state is zeros when terminal). ``score`` is the current held-out score."""

    def __init__(self, task: Task, answer: Callable[[ItemId], Any], cfg: LearnConfig, seed: int,
                 universe: Sequence[ItemId] | None = None, run_dir: Path | None = None):
        self.task, self.answer, self.cfg, self.seed, self.run_dir = task, answer, cfg, seed, run_dir
        name = type(task).__name__
        items = list(task.pool_ids() if universe is None else universe)
        output = REPRESENTATIONS[cfg.representation]
        wanted = {PROBS} | ({output} if output else set())
        missing = sorted(wanted - set(task.outputs))
        if missing:
            raise UserError(f"scorer.params.learn.representation: task '{name}' does not provide "
                            f"{', '.join(missing)} (representation {cfg.representation})")
        if cfg.reward == "heldout":
            order = rng_for(seed, "pal-heldout").permutation(len(items))
            self.heldout = [items[i] for i in np.sort(order[:cfg.heldout])]
            held = set(self.heldout)
            self.stream_items = [i for i in items if i not in held]
            self.heldout_y = np.asarray([_class_index(task, i, answer(i)) for i in self.heldout], dtype=np.int64)
        else:
            self.heldout, self.heldout_y, self.stream_items = [], np.zeros(0, np.int64), items
        if len(self.stream_items) <= cfg.initial:
            raise UserError(f"scorer.params.learn: {len(items)} source items less {len(self.heldout)} held out leave "
                            f"{len(self.stream_items)} to stream, not more than initial ({cfg.initial})")
        self.lower = task.primary_metric in hooks.lower_is_better(task)
        self.initial_state = task.state_dict()   # the untrained model each episode starts from
        first = next(iter(task.predict(self.stream_items[:1], wanted)))
        self.spec = StateSpec.of(first, cfg.representation, cfg.probs)
        self._states: dict[int, np.ndarray] = {}
        self.episode = -1

    # ------------------------------------------------------------------ scores and states
    def heldout_score(self) -> float:
        if self.cfg.reward == "evaluate":
            value = float(self.task.evaluate()[self.task.primary_metric])
            return -value if self.lower else value
        probs = np.concatenate([c[PROBS] for c in self.task.predict(self.heldout, {PROBS})])
        return float(np.mean(probs.argmax(axis=1) == self.heldout_y))

    def state(self, i: int) -> np.ndarray:
        """The state of the ``i``-th arrival under the current model (predicted ``LOOKAHEAD`` arrivals at a time)."""
        if i not in self._states:
            block = self.stream[i:i + LOOKAHEAD]
            states = np.concatenate([state_features(c, self.spec) for c in self.task.predict(block,
                                                                                            self.spec.wants())])
            self._states = {i + j: s for j, s in enumerate(states)}
        return self._states[i]

    def _fit(self) -> None:
        ctx = Context(round=self.fits, seed=self.episode_seed, budget=1, labels=dict(self.labels),
                      run_dir=self.run_dir, progress=False)
        self.task.fit(dict(self.labels), ctx)
        self.fits += 1
        self._states = {}

    # ------------------------------------------------------------------ the MDP
    def reset(self, episode: int) -> np.ndarray:
        cfg = self.cfg
        self.episode = episode
        self.episode_seed = seed_for(self.seed, "pal-episode", episode)
        self.task.load_state_dict(self.initial_state)
        order = rng_for(self.seed, "pal-stream", episode).permutation(len(self.stream_items))
        ordered = [self.stream_items[i] for i in order]
        self.labels: dict[ItemId, Any] = {item: self.answer(item) for item in ordered[:cfg.initial]}
        self.stream = ordered[cfg.initial:][:cfg.max_stream]
        self.fits, self.asked, self.pending, self.position = 0, 0, 0, 0
        self._states = {}
        if self.labels:
            self._fit()
        self.score = self.start_score = self.heldout_score()
        return self.state(0)

    def step(self, action: int) -> tuple[float, np.ndarray, bool]:
        i = self.position
        if action == ASK:
            item = self.stream[i]
            self.labels[item] = self.answer(item)
            self.asked += 1
            self.pending += 1
        terminal = self.asked >= self.cfg.budget or i + 1 >= len(self.stream)
        reward = 0.0
        if self.pending and (self.pending >= self.cfg.refit_every or terminal):
            self._fit()
            self.pending = 0
            new = self.heldout_score()
            reward = self.cfg.reward_scale * (new - self.score)
            self.score = new
        self.position = i + 1
        following = np.zeros(self.spec.dim, np.float32) if terminal else self.state(i + 1)
        return reward, following, terminal


def _class_index(task: Task, item: ItemId, value: Any) -> int:
    try:
        label = task.check_label(item, value)
    except ValueError as exc:
        raise UserError(f"scorer.params.learn.reward: item {item}: {exc}") from None
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise UserError(f"scorer.params.learn.reward: heldout needs class-index labels, task "
                        f"'{type(task).__name__}' gives {label!r}; use reward: evaluate")
    return int(label)


# ------------------------------------------------------------------------------------------- learning
def epsilon(cfg: LearnConfig, episode: int) -> float:
    """Linear annealing from ``epsilon_start`` to ``epsilon_end`` over ``explore_episodes`` (default half)."""
    span = cfg.explore_episodes or max(1, cfg.episodes // 2)
    if episode >= span:
        return cfg.epsilon_end
    return cfg.epsilon_start + episode / span * (cfg.epsilon_end - cfg.epsilon_start)


def run_episode(env: StreamEnvironment, dqn: DQN, replay: Replay, cfg: LearnConfig, seed: int,
                episode: int) -> dict[str, Any]:
    """One episode of epsilon-greedy acting and DQN updates; returns its log record."""
    started = time.perf_counter()
    eps = epsilon(cfg, episode)
    explore = rng_for(seed, "pal-explore", episode)
    minibatches = rng_for(seed, "pal-replay", episode)
    state = env.reset(episode)
    total, losses, greedy, greedy_asks = 0.0, [], 0, 0
    while True:
        action, was_greedy = dqn.act(state, eps, explore)
        greedy += was_greedy
        greedy_asks += was_greedy and action == ASK
        reward, following, terminal = env.step(action)
        replay.add(state, action, reward, following, terminal)
        total += reward
        if replay.size >= max(cfg.learn_start, 1):
            losses.append(dqn.update(*replay.sample(minibatches, cfg.batch_size)))
        if terminal:
            break
        state = following
    return {"episode": episode, "epsilon": round(eps, 4), "asked": env.asked, "seen": env.position,
            "fits": env.fits, "start_score": env.start_score, "final_score": env.score, "return": total,
            "greedy_ask_rate": greedy_asks / greedy if greedy else None,
            "loss": float(np.mean(losses)) if losses else None, "steps": dqn.steps,
            "seconds": round(time.perf_counter() - started, 3)}


def _fingerprint(resolved: recipes.Resolved, cfg: LearnConfig, extra: Mapping[str, Any]) -> str:
    pinned = resolved_recipe(resolved)
    settings = {"task": pinned["task"], "oracle": pinned["oracle"], "seed": pinned["seed"],
                "learn": cfg.model_dump(mode="json", exclude={"episodes"}), **extra}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _read_learning(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != LEARNING_FORMAT:
            raise ValueError(f"no format '{LEARNING_FORMAT}'")
        return state
    except Exception as exc:  # a truncated or foreign file
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: learning state unreadable ({detail}); remove it to start again") from None


def _stored_labels(run: Path, task: Task) -> dict[ItemId, Any]:
    from activelab.store import LabelStore

    if not (run / STORE_FILE).is_file():
        raise UserError(f"--labels-from: {run}: not a run folder (no {STORE_FILE})")
    store = LabelStore(run / STORE_FILE, create=False)
    try:
        labels = store.labels()
    finally:
        store.close()
    known = set(task.pool_ids())
    strangers = [i for i in labels if i not in known]
    if strangers:
        raise UserError(f"--labels-from: {run}: {len(strangers)} labelled items (e.g. {strangers[0]!r}) are not in "
                        f"the pool of task '{type(task).__name__}': a run of another data set?")
    if not labels:
        raise UserError(f"--labels-from: {run}: the run has no labels yet")
    return {i: task.check_label(i, v) for i, v in labels.items()}


def _oracle_answer(resolved: recipes.Resolved, env: Env, task: Task, seed: int) -> Callable[[ItemId], Any]:
    oracle = resolved.classes["oracle"](resolved.configs["oracle"], env)
    if hooks.interactive(oracle) or resolved.recipe.oracle.name != "simulated":
        raise UserError(f"oracle.name: pal learn simulates the oracle from the task's ground truth; use "
                        f"'simulated' (got '{resolved.recipe.oracle.name}'), or --labels-from RUN")
    ctx = Context(round=0, seed=seed, budget=1, labels={}, progress=False)

    def answer(item: ItemId) -> Any:
        for given in oracle.label(task, [item], ctx):
            if isinstance(given, Label):
                return given.value
        raise UserError(f"oracle: no label for item {item}")

    return answer


def learn(recipe_path: str, overrides: Sequence[str] = (), episodes: int | None = None, out: str | None = None,
          labels_from: str | None = None, init: str | None = None, progress: bool = True,
          echo: Callable[[str], None] | None = None) -> Path:
    """Learn (or continue learning) the recipe's PAL policy; returns the policy file's path."""
    resolved = recipes.load(recipe_path, list(overrides))
    if resolved.classes.get("scorer") is not PALScorer:
        raise UserError(f"{recipe_path}: scorer.name: pal learn learns the policy of scorer 'pal' (got "
                        f"'{resolved.recipe.scorer.name}'); override it with scorer.name=pal")
    if episodes is not None and episodes < 1:
        raise UserError("--episodes: must be >= 1")
    config = resolved.configs["scorer"]
    cfg = config.learn if episodes is None else config.learn.model_copy(update={"episodes": episodes})
    policy_path = Path(out) / "policy.pt" if out else Path(config.policy)
    work = policy_path.parent
    work.mkdir(parents=True, exist_ok=True)
    held = lock(work)
    try:
        seed = resolved.recipe.seed
        env = Env(seed=seed, run_dir=work / "source", device=pick_device(), progress=progress)
        env.run_dir.mkdir(exist_ok=True)
        task = resolved.classes["task"](resolved.configs["task"], env)
        extra: dict[str, Any] = {"policy": policy_path.name}
        universe = None
        if labels_from:
            stored = _stored_labels(Path(labels_from), task)
            universe = [i for i in task.pool_ids() if i in stored]
            answer: Callable[[ItemId], Any] = stored.__getitem__
            extra["labels_from"] = hashlib.sha256(json.dumps(sorted(stored.items()), default=str).encode()).hexdigest()
        else:
            answer = _oracle_answer(resolved, env, task, seed)
        start = load_policy(init) if init else None
        if start is not None:
            extra["init"] = start.sha256
        world = StreamEnvironment(task, answer, cfg, seed, universe, env.run_dir)
        spec = world.spec
        if start is not None:
            check_fits(start.spec, spec, str(init), type(task).__name__)
            if (start.spec.representation, start.spec.probs) != (spec.representation, spec.probs):
                raise UserError(f"{init}: the PAL policy reads {start.spec.representation} and {start.spec.probs} "
                                f"probabilities; scorer.params.learn asks for {spec.representation} and {spec.probs}")
        dqn = DQN(spec.dim, cfg.hidden, cfg.gamma, cfg.lr, cfg.target_every, seed_for(seed, "pal-dqn"))
        if start is not None:
            if start.net.hidden.out_features != cfg.hidden:
                raise UserError(f"{init}: the PAL policy has {start.net.hidden.out_features} hidden units; "
                                f"scorer.params.learn.hidden is {cfg.hidden}")
            dqn.q.load_state_dict(start.net.state_dict())
            dqn.target.load_state_dict(start.net.state_dict())
        replay = Replay(cfg.replay, spec.dim)
        fingerprint = _fingerprint(resolved, cfg, extra)
        log: list[dict[str, Any]] = []
        state_file = work / LEARNING_FILE
        if state_file.exists():
            state = _read_learning(state_file)
            if state.get("fingerprint") != fingerprint:
                raise UserError(f"{work}: holds the learning of other settings (task, oracle, seed, "
                                f"scorer.params.learn, --labels-from or --init differ); remove it or choose "
                                f"another --out")
            dqn.load_state_dict(state["dqn"])
            replay.load_state_dict(state["replay"])
            log = json.loads(state["log"])
        say = echo or (lambda line: None)
        if log:
            say(f"resuming after episode {len(log) - 1} ({len(log)} of {cfg.episodes} done)")
        for e in range(len(log), cfg.episodes):
            record = run_episode(world, dqn, replay, cfg, seed, e)
            log.append(record)
            atomic_write(state_file, _torch_bytes({"format": LEARNING_FORMAT, "version": 1,
                                                   "fingerprint": fingerprint, "spec": asdict(spec),
                                                   "dqn": dqn.state_dict(), "replay": replay.state_dict(),
                                                   "log": json.dumps(log)}))
            atomic_write(work / LOG_FILE, "".join(json.dumps(r) + "\n" for r in log).encode())
            say(f"episode {e + 1}/{cfg.episodes}: epsilon {record['epsilon']:.2f}, asked {record['asked']} of "
                f"{record['seen']} seen, held-out {record['start_score']:.4f} -> {record['final_score']:.4f}, "
                f"return {record['return']:.2f}, {record['seconds']:.1f} s")
        recent = [r["greedy_ask_rate"] for r in log[-max(1, len(log) // 5):] if r["greedy_ask_rate"] is not None]
        task_spec = resolved.recipe.task
        info = {"recipe": resolved.recipe.name,
                "task": f"{task_spec.plugin}/{task_spec.name}" if task_spec.plugin else task_spec.name,
                "seed": seed, "episodes": len(log), "budget": cfg.budget, "initial": cfg.initial,
                "reward": cfg.reward, "labels_from": str(Path(labels_from).absolute()) if labels_from else None,
                "init": str(Path(init).absolute()) if init else None,
                "greedy_ask_rate": float(np.mean(recent)) if recent else None,
                "final_scores": [r["final_score"] for r in log[-5:]]}
        save_policy(policy_path, dqn.q, spec, info)
        return policy_path
    finally:
        held.close()


def describe(path: str) -> dict[str, Any]:
    """What ``activelab pal info`` prints: the policy's state and what made it."""
    policy = load_policy(path)
    return {"policy": str(policy.path), "sha256": policy.sha256, "state": {**asdict(policy.spec),
                                                                          "dim": policy.spec.dim},
            "hidden": policy.net.hidden.out_features, **policy.info}


# ------------------------------------------------------------------------------------------- the verb
def _arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="pal_command", required=True)
    lr = sub.add_parser("learn", help="learn a policy in simulation on the recipe's task (resumable)")
    lr.add_argument("recipe")
    lr.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. scorer.params.learn.budget=20")
    lr.add_argument("--episodes", type=int, help="episodes in all (default scorer.params.learn.episodes); more "
                                                 "than already done continue the learning")
    lr.add_argument("--out", help="folder for policy.pt and the learning state (default: the folder of "
                                  "scorer.params.policy, under its name)")
    lr.add_argument("--labels-from", metavar="RUN", help="learn on this run's labels instead of the ground truth")
    lr.add_argument("--init", metavar="POLICY", help="start from this policy file (fine-tune a transferred policy)")
    lr.add_argument("-q", "--quiet", action="store_true", help="no line per episode")
    info = sub.add_parser("info", help="what a policy file holds")
    info.add_argument("policy")
    info.add_argument("--json", action="store_true")


def _run(args: argparse.Namespace) -> int:
    if args.pal_command == "info":
        facts = describe(args.policy)
        if args.json:
            print(json.dumps(facts))
        else:
            for key, value in facts.items():
                print(f"{key}: {value}")
        return 0
    echo = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    path = learn(args.recipe, args.overrides, args.episodes, args.out, args.labels_from, args.init,
                 progress=not args.quiet, echo=echo)
    print(path)
    print(f"wrote the PAL policy {path}; use it with scorer: {{name: pal, params: {{policy: {path}}}}} and "
          f"selector: {{name: stream, params: {{threshold: 0}}}}", file=sys.stderr)
    return 0


PAL = Verb("PAL (Fang et al. 2017): learn a stream-selection policy by deep Q-learning (learn), or show one (info)",
           _arguments, _run)
