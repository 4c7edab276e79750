"""The core's own plugin manifest: the task-independent scorers, selectors and oracles. It registers through the
same ``activelab.plugins`` entry-point group as every other plugin."""
from .registry import Manifest

MANIFEST = Manifest(
    name="core",
    description="task-independent informativeness measures, selectors and oracles",
    components={
        # A tiny Gaussian-blob classifier: the example task for plugin authors and the loop's fast test task.
        "task": {"toy": "activelab.testing:ToyTask"},
        "scorer": {
            "random": "activelab.scorers.uncertainty:RandomScorer",
            "least_confidence": "activelab.scorers.uncertainty:LeastConfidence",
            "margin": "activelab.scorers.uncertainty:Margin",
            "entropy": "activelab.scorers.uncertainty:Entropy",
            "bald": "activelab.scorers.uncertainty:BALD",
            "qbc": "activelab.scorers.uncertainty:QueryByCommittee",
            "egl": "activelab.scorers.uncertainty:ExpectedGradientLength",
            "density": "activelab.scorers.density:InformationDensity",
            "kcenter": "activelab.scorers.density:KCenterGreedy",
        },
        "selector": {
            "topk": "activelab.selectors:TopK",
            "stream": "activelab.selectors:StreamThreshold",
            "subsample": "activelab.selectors:Subsample",
            "proportional": "activelab.selectors:Proportional",
        },
        "oracle": {
            "simulated": "activelab.oracles.simulated:SimulatedOracle",
            "terminal": "activelab.oracles.terminal:TerminalOracle",
            "exchange": "activelab.oracles.exchange:ExchangeOracle",
        },
    },
)
