"""PAL (Fang, Li & Cohn 2017): the scorer ``pal`` (the learnt policy's advantage), its DQN, the policy file and its
checks, the simulated stream environment (reward = held-out change), and ``activelab pal learn`` (resumable)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from activelab.cli import main
from activelab.errors import UserError
from activelab.protocol import EMBEDDINGS, FEATURES, PROBS, Candidates, Env
from activelab.strategies.pal import (
    ASK,
    DQN,
    SKIP,
    LearnConfig,
    PALScorer,
    PolicyMismatch,
    QNetwork,
    Replay,
    StateSpec,
    load_policy,
    pin_policy,
    save_policy,
    state_features,
)
from activelab.strategies.pal_learn import StreamEnvironment, epsilon
from activelab.testing import ScorerConformance, ToyTask, fitted_toy_task, make_context, predictions, true_labels

SMALL_TOY = {"n_items": 120, "n_test": 60, "epochs": 20}
LEARN = {"episodes": 4, "budget": 5, "initial": 4, "heldout": 40, "batch_size": 8, "learn_start": 8, "hidden": 16}


def make_policy(path, task, representation="features", probs="sorted", hidden=8, seed=0):
    """A policy file for ``task`` with a seeded random Q-network whose ask bias is set so that it asks about half
    of the pool and skips the other half."""
    spec_output = {"features": FEATURES, "embeddings": EMBEDDINGS, "none": None}[representation]
    chunk = predictions(task, list(task.pool_ids()), {PROBS} | ({spec_output} if spec_output else set()))
    spec = StateSpec.of(chunk, representation, probs)
    torch.manual_seed(seed)
    net = QNetwork(spec.dim, hidden)
    with torch.no_grad():
        q = net(torch.as_tensor(state_features(chunk, spec)))
        net.out.bias[ASK] -= float(torch.median(q[:, ASK] - q[:, SKIP]))
    save_policy(path, net, spec, {"recipe": "hand-made"})
    return path


@pytest.fixture(scope="module")
def toy_policy(tmp_path_factory):
    return make_policy(tmp_path_factory.mktemp("pal") / "policy.pt", fitted_toy_task())


def toy_recipe(tmp_path, policy, learn=None, **extra):
    recipe = {"name": "pal_toy", "seed": 3, "task": {"name": "toy", "params": dict(SMALL_TOY)},
              "scorer": {"name": "pal", "params": {"policy": str(policy), "learn": {**LEARN, **(learn or {})}}},
              "selector": {"name": "stream", "params": {"threshold": 0.0}},
              "loop": {"initial": 10, "batch": 5, "rounds": 2}, **extra}
    path = tmp_path / "pal_toy.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


# ------------------------------------------------------------------------------------------- conformance
class TestPALScorer(ScorerConformance):
    covers = ("core", "scorer", "pal")
    mode = "policy"

    @pytest.fixture(autouse=True)
    def _policy(self, toy_policy):
        self.policy = toy_policy

    def make_scorer(self):
        return PALScorer(PALScorer.Config(policy=self.policy, mode=self.mode), Env())


class TestPALRandomRate(TestPALScorer):
    covers = ("core", "scorer", "pal")
    mode = "random_rate"


def test_random_rate_asks_as_often_as_the_policy_on_each_chunk(toy_policy):
    task = fitted_toy_task()
    ids = list(task.pool_ids())
    candidates, ctx = Candidates(ids, np.arange(20, 250)), make_context(round=1, seed=4)
    learnt = list(PALScorer(PALScorer.Config(policy=toy_policy), Env()).score(task, candidates, ctx))
    shuffled = list(PALScorer(PALScorer.Config(policy=toy_policy, mode="random_rate"), Env()).score(task, candidates,
                                                                                                  ctx))
    assert len(learnt) == len(shuffled) > 1          # the toy task predicts in chunks of 64
    asks = [int((a > 0).sum()) for a in learnt]
    assert 0 < sum(asks) < len(candidates), "a hand-made policy that asks about all or none tests nothing"
    assert asks == [int((s > 0).sum()) for s in shuffled]
    assert all(set(np.unique(s)) <= {-1.0, 1.0} for s in shuffled)
    assert any(not np.array_equal(a > 0, s > 0) for a, s in zip(learnt, shuffled)), "not shuffled"


def test_the_stream_asks_while_q_ask_beats_q_skip(toy_policy):
    """With the stream selector at threshold 0 the round asks the first arrivals whose advantage is positive."""
    from activelab.strategies.selectors import StreamThreshold

    task = fitted_toy_task()
    ids = list(task.pool_ids())
    ctx = make_context(true_labels(task, ids[:20]), round=1, seed=2, budget=6)
    selector = StreamThreshold(StreamThreshold.Config(threshold=0.0))
    candidates = selector.candidates(Candidates(ids, np.arange(20, len(ids))), ctx)
    scorer = PALScorer(PALScorer.Config(policy=toy_policy), Env())
    picks = selector.select(candidates, scorer.score(task, candidates, ctx), 6, ctx)
    policy = load_policy(toy_policy)
    states = state_features(predictions(task, candidates, {PROBS, FEATURES}), policy.spec)
    expected = np.flatnonzero(policy.advantage(states) > 0)[:6]
    assert list(picks.positions) == list(expected) and len(picks) == 6


# ------------------------------------------------------------------------------------------- the state
def test_state_features_are_representation_sorted_probs_and_confidences():
    chunk = {PROBS: np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]]), FEATURES: np.array([[1.0, 2.0], [3.0, 4.0]])}
    spec = StateSpec("features", 2, 3, "sorted")
    s = state_features(chunk, spec)
    assert s.shape == (2, spec.dim) == (2, 7) and s.dtype == np.float32
    np.testing.assert_allclose(s[0, :5], [1.0, 2.0, 0.5, 0.3, 0.2])
    np.testing.assert_allclose(s[0, 5], 0.5)                                            # max probability
    np.testing.assert_allclose(s[0, 6], -(0.2 * np.log(0.2) + 0.5 * np.log(0.5) + 0.3 * np.log(0.3)) / np.log(3),
                               rtol=1e-6)                                               # entropy / log C
    np.testing.assert_allclose(s[1, 5:], [1.0, 0.0], atol=1e-6)
    in_order = state_features(chunk, StateSpec("none", 0, 3, "classes"))
    np.testing.assert_allclose(in_order[0, :3], [0.2, 0.5, 0.3])
    assert in_order.shape == (2, 5)


def test_needs_follow_the_policy(tmp_path):
    task = fitted_toy_task()
    for representation, needs in (("none", {PROBS}), ("embeddings", {PROBS, EMBEDDINGS}),
                                  ("features", {PROBS, FEATURES})):
        path = make_policy(tmp_path / f"{representation}.pt", task, representation)
        assert set(PALScorer(PALScorer.Config(policy=path), Env()).needs) == needs


# ------------------------------------------------------------------------------------------- the DQN
def hand_made_dqn(gamma=0.5, lr=0.1, target_every=100):
    """Q(s) = W2 relu(W1 s + b1) + b2 with W1 = I, W2 = I (skip reads s0, ask reads s1); the target network reads
    the same hidden units with output weights diag(2, 3)."""
    dqn = DQN(state_dim=2, hidden=2, gamma=gamma, lr=lr, target_every=target_every, seed=0)
    with torch.no_grad():
        for net, out in ((dqn.q, [[1.0, 0.0], [0.0, 1.0]]), (dqn.target, [[2.0, 0.0], [0.0, 3.0]])):
            net.hidden.weight.copy_(torch.eye(2))
            net.hidden.bias.zero_()
            net.out.weight.copy_(torch.tensor(out))
            net.out.bias.zero_()
    return dqn


def test_dqn_update_on_a_hand_made_transition():
    """s = (1, 2), ask, r = 0.75, s' = (1, 1), not terminal, gamma 0.5: Q(s, ask) = 2; the target network gives
    y = 0.75 + 0.5 * max(2, 3) = 2.25 (the online network would give 1.25); delta = -0.25, Huber loss 0.5 * 0.25^2 =
    0.03125 (squared error: 0.0625); the gradient reaches only the ask output and the hidden unit it reads, and
    Adam's first step moves each such parameter by lr against the sign of its gradient."""
    dqn = hand_made_dqn()
    batch = (np.array([[1.0, 2.0]]), np.array([ASK]), np.array([0.75]), np.array([[1.0, 1.0]]), np.array([False]))
    assert dqn.update(*batch) == pytest.approx(0.03125)
    q = dqn.q
    atol = 1e-6   # Adam's step is lr * g / (|g| + 1e-8)
    np.testing.assert_allclose(q.out.bias.detach(), [0.0, 0.1], atol=atol)
    np.testing.assert_allclose(q.out.weight.detach(), [[1.0, 0.0], [0.1, 1.1]], atol=atol)    # dL/dW2[ask] = delta h
    np.testing.assert_allclose(q.hidden.weight.detach(), [[1.0, 0.0], [0.1, 1.1]], atol=atol)  # delta (0, 1) x s
    np.testing.assert_allclose(q.hidden.bias.detach(), [0.0, 0.1], atol=atol)
    np.testing.assert_allclose(dqn.target.out.weight, [[2.0, 0.0], [0.0, 3.0]])                # target untouched
    assert dqn.steps == 1


def test_dqn_terminal_transitions_ignore_the_next_state_and_the_target_syncs():
    """Terminal: y = r = 0 whatever s' is; s = (3, 1), skip: Q = 3, delta = 3, Huber loss 3 - 0.5 (the linear part)."""
    dqn = hand_made_dqn(target_every=2)
    batch = (np.array([[3.0, 1.0]]), np.array([SKIP]), np.array([0.0]), np.array([[100.0, 100.0]]), np.array([True]))
    assert dqn.update(*batch) == pytest.approx(2.5)
    assert not torch.equal(dqn.target.out.weight, dqn.q.out.weight)
    dqn.update(*batch)
    for a, b in zip(dqn.q.state_dict().values(), dqn.target.state_dict().values()):
        assert torch.equal(a, b)                                                 # synced after target_every steps


def test_dqn_and_replay_round_trip(tmp_path):
    dqn, replay = hand_made_dqn(), Replay(3, 2)
    rng = np.random.default_rng(0)
    for i in range(5):                          # wraps: the newest 3 stay
        replay.add(np.full(2, i, np.float32), i % 2, float(i), np.full(2, i + 1, np.float32), i == 4)
    dqn.update(*replay.sample(rng, 2))
    path = tmp_path / "state.pt"
    torch.save({"dqn": dqn.state_dict(), "replay": replay.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    again, back = hand_made_dqn(), Replay(3, 2)
    again.load_state_dict(saved["dqn"])
    back.load_state_dict(saved["replay"])
    assert sorted(back.rewards.tolist()) == [2.0, 3.0, 4.0] and back.size == 3 and back.head == replay.head
    batch = replay.sample(np.random.default_rng(1), 2)
    assert dqn.update(*batch) == again.update(*batch)
    assert [epsilon(LearnConfig(episodes=10), e) for e in (0, 5, 9)] == [1.0, 0.05, 0.05]
    assert epsilon(LearnConfig(episodes=10, explore_episodes=4), 2) == pytest.approx(0.525)


# ------------------------------------------------------------------------------------------- the policy file
def test_an_incompatible_task_is_refused_naming_the_file_and_what_differs(toy_policy):
    scorer = PALScorer(PALScorer.Config(policy=toy_policy), Env())
    for params, differs in (({"n_classes": 3}, "4 classes in the policy, 3 from the task"),
                            ({"n_features": 3}, "features of 2 dims in the policy, 3 from the task")):
        task = ToyTask(ToyTask.Config(**SMALL_TOY, **params))
        with pytest.raises(PolicyMismatch) as err:
            list(scorer.score(task, task.pool_ids()[:10], make_context()))
        message = str(err.value)
        assert str(toy_policy) in message and differs in message and "\n" not in message


def test_an_incompatible_task_stops_a_run_with_one_line(tmp_path, toy_policy, capsys):
    recipe = toy_recipe(tmp_path, toy_policy)
    code = main(["run", str(recipe), "task.params.n_classes=3", "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(toy_policy) in err and "4 classes in the policy, 3 from the task" in err


def test_unreadable_policy_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no PAL policy file here"):
        load_policy(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="junk.pt: not a readable PAL policy file"):
        load_policy(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="other.pt: not a PAL policy file"):
        load_policy(tmp_path / "other.pt")


def test_a_run_refuses_a_policy_changed_under_it(tmp_path):
    task = fitted_toy_task()
    path = make_policy(tmp_path / "p.pt", task, seed=1)
    run = tmp_path / "run"
    run.mkdir()
    pin_policy(run, load_policy(path))
    pin_policy(run, load_policy(path))                   # the same file: fine
    make_policy(path, task, seed=2)
    with pytest.raises(UserError, match="the PAL policy changed since this run started"):
        pin_policy(run, load_policy(path))


# ------------------------------------------------------------------------------------------- the environment
def heldout_accuracy(task, env):
    probs = predictions(task, env.heldout, {PROBS})[PROBS]
    return float(np.mean(probs.argmax(1) == np.array([task.true_label(i) for i in env.heldout])))


def test_the_reward_is_the_held_out_change():
    task = ToyTask(ToyTask.Config(**SMALL_TOY))
    cfg = LearnConfig(**{**LEARN, "budget": 6, "representation": "features"})
    env = StreamEnvironment(task, task.true_label, cfg, seed=1)
    assert not set(env.heldout) & set(env.stream_items) and len(env.heldout) == cfg.heldout
    state = env.reset(0)
    assert not set(env.labels) & set(env.heldout) and len(env.labels) == cfg.initial
    assert state.shape == (env.spec.dim,) == (2 + 4 + 2,)
    before = heldout_accuracy(task, env)
    assert env.score == pytest.approx(before)
    rewards = []
    for step in range(6):
        if step % 2:                                  # a skip: reward 0, the model unchanged
            seen = predictions(task, env.heldout, {PROBS})[PROBS]
            reward, state, terminal = env.step(SKIP)
            assert reward == 0.0
            np.testing.assert_array_equal(seen, predictions(task, env.heldout, {PROBS})[PROBS])
            continue
        reward, state, terminal = env.step(ASK)
        after = heldout_accuracy(task, env)
        assert reward == pytest.approx(cfg.reward_scale * (after - before))
        rewards.append(reward)
        before = after
    assert any(r != 0 for r in rewards), "no ask changed the held-out accuracy: the check is vacuous"
    assert env.asked == 3 and not terminal


def test_the_evaluate_reward_and_the_terminal_step():
    task = ToyTask(ToyTask.Config(**SMALL_TOY))
    cfg = LearnConfig(**{**LEARN, "budget": 2, "reward": "evaluate", "representation": "none"})
    env = StreamEnvironment(task, task.true_label, cfg, seed=2)
    assert env.heldout == [] and env.spec.dim == 4 + 2
    env.reset(3)
    before = task.evaluate()["accuracy"]
    reward, _, terminal = env.step(ASK)
    assert reward == pytest.approx(100 * (task.evaluate()["accuracy"] - before)) and not terminal
    reward, following, terminal = env.step(ASK)
    assert terminal and not following.any() and env.asked == 2


def test_episodes_restart_the_model_and_reproduce():
    task = ToyTask(ToyTask.Config(**SMALL_TOY))
    env = StreamEnvironment(task, task.true_label, LearnConfig(**LEARN), seed=1)
    first = [env.reset(0), env.step(ASK), env.stream[:5]]
    env.step(ASK)
    env.reset(1)
    assert env.stream[:5] != first[2]                 # another episode: another stream order
    again = [env.reset(0), env.step(ASK), env.stream[:5]]
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1][0] == again[1][0] and first[2] == again[2]


# ------------------------------------------------------------------------------------------- the verb
def test_learn_then_use_then_refuse_other_settings(tmp_path, capsys):
    policy = tmp_path / "p" / "policy.pt"
    recipe = toy_recipe(tmp_path, policy)
    assert main(["pal", "learn", str(recipe), "-q"]) == 0
    lines = (tmp_path / "p" / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(line)["episode"] for line in lines] == [0, 1, 2, 3]
    assert all(json.loads(line)["asked"] == LEARN["budget"] for line in lines)
    bits = policy.read_bytes()
    assert main(["pal", "learn", str(recipe), "-q"]) == 0            # done already: nothing changes
    assert policy.read_bytes() == bits
    capsys.readouterr()
    assert main(["pal", "learn", str(recipe), "scorer.params.learn.budget=3", "-q"]) == 2
    assert "holds the learning of other settings" in capsys.readouterr().err
    assert main(["pal", "info", str(policy), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state"] == {"representation": "features", "feature_dim": 2, "n_classes": 4, "probs": "sorted",
                             "dim": 8} and info["episodes"] == 4
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "-q"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [10, 15, 20]
    assert json.loads((tmp_path / "run" / "pal_policy.json").read_text())["sha256"] == load_policy(policy).sha256


def test_learn_refuses_a_recipe_of_another_scorer_and_a_person_as_oracle(tmp_path, capsys):
    recipe = toy_recipe(tmp_path, tmp_path / "p.pt")
    assert main(["pal", "learn", str(recipe), "scorer={name: entropy}"]) == 2
    assert "pal learn learns the policy of scorer 'pal'" in capsys.readouterr().err
    assert main(["pal", "learn", str(recipe), "oracle={name: terminal}"]) == 2
    assert "oracle.name: pal learn simulates the oracle" in capsys.readouterr().err
    assert main(["pal", "learn", str(recipe), "scorer.params.learn.heldout=200"]) == 2
    assert "leave 0 to stream" in capsys.readouterr().err


def test_learn_on_a_runs_own_labels_from_a_transferred_policy(tmp_path, capsys):
    source = toy_recipe(tmp_path, tmp_path / "source" / "policy.pt")
    assert main(["pal", "learn", str(source), "--episodes", "2", "-q"]) == 0
    run = tmp_path / "run"
    assert main(["run", str(source), "scorer={name: entropy}", "selector={name: topk}", "loop.initial=40",
                 "loop.rounds=1", "--out", str(run), "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "target"
    assert main(["pal", "learn", str(source), "--labels-from", str(run), "--init",
                 str(tmp_path / "source" / "policy.pt"), "--out", str(out), "--episodes", "2",
                 "scorer.params.learn.heldout=15", "scorer.params.learn.budget=4", "-q"]) == 0
    info = load_policy(out / "policy.pt").info
    assert info["labels_from"] == str(run.absolute()) and info["init"].endswith("source/policy.pt")
    # the learning streamed only the run's 45 labelled items, less the held-out and initial ones
    for line in (out / "episodes.jsonl").read_text().splitlines():
        assert json.loads(line)["seen"] <= 45 - 15 - LEARN["initial"]


# ------------------------------------------------------------------------------------------- kill -9
def test_kill_during_learning_loses_at_most_one_episode_and_ends_as_uninterrupted(tmp_path):
    slow = {"oracle": {"name": "simulated", "params": {"delay_s": 0.03}}}
    learn = {"episodes": 5, "budget": 6}
    killed = toy_recipe(tmp_path, tmp_path / "killed" / "policy.pt", learn, **slow)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "activelab.cli", "pal", "learn", str(killed), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "killed" / "episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    time.sleep(0.3)                                   # into the next episode
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = log.read_text().splitlines()
    assert 2 <= len(before) < 5, "the kill did not land during the learning"
    assert main(["pal", "learn", str(killed), "-q"]) == 0
    after = log.read_text().splitlines()
    assert after[:len(before)] == before              # the episodes done before the kill were kept, not redone
    assert [json.loads(line)["episode"] for line in after] == [0, 1, 2, 3, 4]

    whole = yaml.safe_load(killed.read_text())
    whole["scorer"]["params"]["policy"] = str(tmp_path / "whole" / "policy.pt")
    (tmp_path / "whole.yaml").write_text(yaml.safe_dump(whole))
    assert main(["pal", "learn", str(tmp_path / "whole.yaml"), "-q"]) == 0
    a, b = load_policy(tmp_path / "killed" / "policy.pt"), load_policy(tmp_path / "whole" / "policy.pt")
    for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values()):
        assert torch.equal(x, y)
    strip = lambda lines: [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]  # noqa
    assert strip(after) == strip((tmp_path / "whole" / "episodes.jsonl").read_text().splitlines())
