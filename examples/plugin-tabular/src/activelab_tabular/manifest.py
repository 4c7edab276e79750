"""The plugin's manifest: what it offers, by name, as lazy import strings.

``pyproject.toml`` registers ``MANIFEST`` in the ``activelab.plugins`` entry-point group. activelab reads it when
it looks for plugins, and imports a component's module only when a recipe uses that component, so listing the
plugins (or running a vision recipe) never imports torch code from here.

A recipe names components as ``task: {plugin: tabular, name: tabular_regression}``; ``plugin:`` may be left out
when no other installed plugin uses the same name. The names below are prefixed ``tabular_`` so they stay unique
next to the built-in plugins' ``classification``.
"""
from activelab.registry import Manifest

MANIFEST = Manifest(
    name="tabular",
    description="tables: classification and regression on scikit-learn's bundled datasets (wine, breast cancer, "
                "iris, digits, diabetes); query-by-committee for regression",
    components={
        "task": {
            "tabular_classification": "activelab_tabular.classification:TabularClassification",
            "tabular_regression": "activelab_tabular.regression:TabularRegression",
        },
        "scorer": {
            "committee_variance": "activelab_tabular.scorers:CommitteeVariance",
        },
        # Selectors and oracles: the core's (topk, simulated, terminal, ...) work unchanged on tables.
    },
)
