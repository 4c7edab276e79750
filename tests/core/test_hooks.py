"""Optional hooks: a misspelt or misshapen hook is a clear error when the registry loads the plugin's component (and
in ``activelab validate``), every built-in component passes, and the accessors give each hook or its default.
The run statuses and pool outcomes are str-valued enums whose stored and printed text is unchanged."""
from __future__ import annotations

import json
import sys
import types

import pytest

from activelab import hooks, registry
from activelab import recipe as recipes
from activelab.cli import main
from activelab.errors import RecipeError, UserError
from activelab.pool import Outcome
from activelab.protocol import RunStatus
from activelab.testing import ToyTask


class Misspelt(ToyTask):
    def sugest(self, ids):
        return [None] * len(ids)


class WrongArity(ToyTask):
    def suggest(self):
        return []


class WrongAttribute(ToyTask):
    lower_is_better = "wer"          # a string, not a collection of names


class BadQueryType(ToyTask):
    query_type = "stream"


class ChattyOracle:
    interactve = True

    def label(self, task, items, ctx):
        yield from ()


class FineVariants(ToyTask):
    """Defaults, *args, a static and a class method, a property: all fit the hooks' shapes."""

    def suggest(self, ids, extra=None):
        return [None] * len(ids)

    def corrupt_label(self, *args):
        return args[0]

    @staticmethod
    def parse_label(text):
        return text

    @classmethod
    def label_schema(cls):
        return {"type": "text"}

    @property
    def metrics(self):
        return ("accuracy",)


@pytest.fixture
def fake_plugin(monkeypatch):
    module = types.ModuleType("fake_hooks_plugin")
    for cls in (Misspelt, WrongArity, WrongAttribute, BadQueryType, ChattyOracle, FineVariants):
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    found = dict(registry.plugins())
    found["fake"] = registry.Plugin(registry.Manifest("fake", components={
        "task": {"misspelt": "fake_hooks_plugin:Misspelt", "arity": "fake_hooks_plugin:WrongArity",
                 "attribute": "fake_hooks_plugin:WrongAttribute", "query": "fake_hooks_plugin:BadQueryType",
                 "fine": "fake_hooks_plugin:FineVariants"},
        "oracle": {"chatty": "fake_hooks_plugin:ChattyOracle"}}), "a test")
    monkeypatch.setattr(registry, "plugins", lambda: found)


@pytest.mark.parametrize("kind, name, message", [
    ("task", "misspelt", "plugin fake: task 'misspelt' (Misspelt): attribute 'sugest' is not a hook; did you mean "
                         "'suggest'?"),
    ("task", "arity", "plugin fake: task 'arity' (WrongArity): hook 'suggest' is suggest(self); expected "
                      "suggest(self, ids)"),
    ("task", "attribute", "plugin fake: task 'attribute' (WrongAttribute): hook 'lower_is_better' is 'wer'; expected "
                          "a collection of metric names"),
    ("task", "query", "hook 'query_type' is 'stream'; expected 'pool' or 'synthesis'"),
    ("oracle", "chatty", "plugin fake: oracle 'chatty' (ChattyOracle): attribute 'interactve' is not a hook; did you "
                         "mean 'interactive'?"),
])
def test_a_bad_hook_is_refused_when_the_component_is_loaded(fake_plugin, kind, name, message):
    with pytest.raises(UserError) as err:
        registry.load(kind, name, "fake")
    assert message in str(err.value)


def test_hooks_of_other_shapes_that_fit_are_accepted(fake_plugin):
    assert registry.load("task", "fine", "fake") is FineVariants


def test_validate_reports_a_misspelt_hook_with_its_path(fake_plugin):
    data = {"name": "x", "task": {"name": "misspelt", "plugin": "fake"}, "scorer": {"name": "entropy"},
            "loop": {"rounds": 1, "initial": 2, "batch": 2}}
    with pytest.raises(RecipeError) as err:
        recipes.validate(data, "r.yaml")
    assert err.value.problems[0].startswith("task.name: plugin fake: task 'misspelt' (Misspelt): attribute 'sugest'")


def test_every_installed_component_passes_the_hook_check():
    for plugin, found in registry.plugins().items():
        for kind, table in found.manifest.components.items():
            for name in table:
                registry.load(kind, name, plugin)


def test_accessors_give_the_hook_or_its_default():
    class Bare:
        pass

    task = ToyTask()
    assert hooks.suggest(task) == task.suggest and hooks.label_schema(task) == task.label_schema
    assert hooks.corrupt_label(task) == task.corrupt_label and hooks.fit_bootstrap(task) == task.fit_bootstrap
    assert hooks.metrics(ToyTask) == {"accuracy", "n_train", "train_accuracy"} and hooks.query_type(task) == "pool"
    bare = Bare()
    for accessor in (hooks.suggest, hooks.label_schema, hooks.parse_label, hooks.corrupt_label, hooks.fit_bootstrap,
                     hooks.data_fingerprint, hooks.metrics, hooks.label_cost):
        assert accessor(bare) is None
    assert hooks.lower_is_better(bare) == frozenset() and hooks.query_type(bare) == "pool"
    assert hooks.label_cost(task) == task.label_cost and hooks.cost_unit(task) == "seconds"
    assert hooks.cost_unit(bare) == "labels"
    assert hooks.interactive(bare) is False
    assert hooks.predict_batch_size(task) == task.config.chunk_size and hooks.predict_batch_size(bare) is None
    assert hooks.fits_distributed(task) is False and hooks.fits_distributed(bare) is False
    assert set(hooks.HOOKS) == {"suggest", "label_schema", "parse_label", "corrupt_label", "fit_bootstrap",
                                "lower_is_better", "metrics", "data_fingerprint", "query_type", "interactive",
                                "label_cost", "cost_unit", "predict_batch_size", "fits_distributed"}


def test_the_hook_protocols_are_documented():
    for name, hook in hooks.HOOKS.items():
        doc = hook.protocol.__doc__ if hook.valid else getattr(hook.protocol, name).__doc__
        assert doc and len(doc) > 40, name


def test_statuses_and_outcomes_keep_their_text():
    assert [s.value for s in RunStatus] == ["created", "running", "labelling", "awaiting labels", "labels imported",
                                            "training", "paused", "interrupted", "done"]
    assert [o.value for o in Outcome] == ["labelled", "same", "skipped", "undone", "nothing to undo", "replaced"]
    for member in (RunStatus.AWAITING_LABELS, Outcome.NOTHING_TO_UNDO):
        assert member == member.value and str(member) == f"{member}" == member.value
        assert json.dumps({"status": member}) == json.dumps({"status": member.value})


def test_export_and_import_are_verbs_the_core_plugin_contributes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")                  # one line per verb in the help
    assert registry.commands()["export"] == ("core", "activelab.labelling.commands:EXPORT")
    assert registry.commands()["import"] == ("core", "activelab.labelling.commands:IMPORT")
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert "export" in listing and "write the outstanding batch for people to label in another tool" in listing
    assert main(["export", "/nonexistent/run", "--format", "csv"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_broken_plugin_verb_is_skipped_with_a_warning(monkeypatch):
    found = dict(registry.plugins())
    found["fake"] = registry.Plugin(registry.Manifest("fake", commands={"frobnicate": "no_such_module:VERB",
                                                                        "run": "no_such_module:VERB"}), "a test")
    monkeypatch.setattr(registry, "plugins", lambda: found)
    from activelab.cli import build_parser

    with pytest.warns(UserWarning) as caught:
        parser = build_parser()
    messages = " ".join(str(w.message) for w in caught)
    assert "command 'frobnicate'" in messages and "command 'run' is a built-in command" in messages
    assert parser.parse_args(["resume", "x"]).command == "resume"


def test_attribute_accessors_on_a_class_whose_hook_is_a_property():
    assert hooks.metrics(FineVariants) is None and hooks.metrics(FineVariants()) == {"accuracy"}
