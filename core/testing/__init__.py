"""The conformance kit (:mod:`.conformance`) and the toy task (:mod:`.toy`), for activelab's own tests and for
third-party plugin authors: ``from activelab.testing import ScorerConformance, ToyTask, make_context``."""
from .conformance import (
    OracleConformance,
    ScorerConformance,
    SelectorConformance,
    StoppingConformance,
    TaskConformance,
    fitted_toy_task,
    make_context,
    predictions,
    true_labels,
)
from .toy import ToyNet, ToyTask

__all__ = ["OracleConformance", "ScorerConformance", "SelectorConformance", "StoppingConformance", "TaskConformance",
           "ToyNet", "ToyTask", "fitted_toy_task", "make_context", "predictions", "true_labels"]
