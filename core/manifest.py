"""The core's own plugin manifest: the task-independent strategies (:mod:`activelab.strategies`), the tools for
people labelling (:mod:`activelab.labelling`, with their command-line verbs) and the toy task. It registers through
the same ``activelab.plugins`` entry-point group as every other plugin; the kernel imports none of them."""
from .registry import Manifest

MANIFEST = Manifest(
    name="core",
    description="task-independent informativeness measures, selectors and oracles",
    components={
        # A tiny Gaussian-blob classifier: the example task for plugin authors and the loop's fast test task.
        "task": {"toy": "activelab.testing.toy:ToyTask"},
        "scorer": {
            "random": "activelab.strategies.uncertainty:RandomScorer",
            "least_confidence": "activelab.strategies.uncertainty:LeastConfidence",
            "margin": "activelab.strategies.uncertainty:Margin",
            "entropy": "activelab.strategies.uncertainty:Entropy",
            "bald": "activelab.strategies.uncertainty:BALD",
            "qbc": "activelab.strategies.uncertainty:QueryByCommittee",
            "egl": "activelab.strategies.uncertainty:ExpectedGradientLength",
            "density": "activelab.strategies.diversity:InformationDensity",
            "kcenter": "activelab.strategies.diversity:KCenterGreedy",
            # batch-aware and low-budget strategies (issue 16)
            "typiclust": "activelab.strategies.coldstart:TypiClust",
            "probcover": "activelab.strategies.coldstart:ProbCover",
            "badge": "activelab.strategies.batch:BADGE",
            "cluster_margin": "activelab.strategies.batch:ClusterMargin",
            "batchbald": "activelab.strategies.batchbald:BatchBALD",
            # uncertain and diverse batches (issue 15)
            "suggestive": "activelab.strategies.suggestive:SuggestiveAnnotation",
            "usdm": "activelab.strategies.usdm:USDM",
            "per_cost": "activelab.strategies.cost:PerCost",
            # expected error reduction, exact and approximated (issue 15)
            "eer": "activelab.strategies.eer:ExpectedErrorReduction",
            "eer_approx": "activelab.strategies.eer:ApproxErrorReduction",
            # learning loss (Yoo & Kweon 2019): a task's loss-prediction module's estimate (vision, speech)
            "predicted_loss": "activelab.strategies.lossprediction:PredictedLoss",
            # regression (issue 15): tasks with the `predictions` output
            "emcm": "activelab.strategies.regression:EMCM",
            "committee_variance": "activelab.strategies.regression:CommitteeVariance",
            "gsx": "activelab.strategies.regression:GSx",
            # PAL (Fang et al. 2017): a stream policy learnt by deep Q-learning (issue 18; `activelab pal learn`)
            "pal": "activelab.strategies.pal:PALScorer",
        },
        "selector": {
            "topk": "activelab.strategies.selectors:TopK",
            "stream": "activelab.strategies.selectors:StreamThreshold",
            "subsample": "activelab.strategies.selectors:Subsample",
            "proportional": "activelab.strategies.selectors:Proportional",
            "stochastic": "activelab.strategies.stochastic:StochasticBatch",
        },
        "oracle": {
            "simulated": "activelab.strategies.simulated:SimulatedOracle",
            "terminal": "activelab.labelling.terminal:TerminalOracle",
            "exchange": "activelab.labelling.files:ExchangeOracle",
        },
        # when to stop asking (the recipe's `stopping` list; issue 16)
        "stopping": {
            "stabilizing_predictions": "activelab.strategies.stopping:StabilizingPredictions",
            "max_uncertainty": "activelab.strategies.stopping:MaxUncertainty",
            "overall_uncertainty": "activelab.strategies.stopping:OverallUncertainty",
            "expected_error": "activelab.strategies.stopping:ExpectedError",
        },
    },
    commands={
        "export": "activelab.labelling.commands:EXPORT",
        "import": "activelab.labelling.commands:IMPORT",
        "schema": "activelab.schema:SCHEMA",
        "compare": "activelab.evaluation.compare:COMPARE",
        "pal": "activelab.strategies.pal_learn:PAL",
    },
)
