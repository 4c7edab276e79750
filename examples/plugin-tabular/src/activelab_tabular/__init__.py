"""activelab-tabular: active learning on tables, as an out-of-tree activelab plugin.

What is where (each file is small and reads top to bottom):

- :mod:`.manifest`: the plugin's component names mapped to lazy ``"module:attr"`` strings; the entry point in
  ``pyproject.toml`` points at it. Importing it imports nothing else, so ``activelab plugins`` stays fast.
- :mod:`.data`: loading scikit-learn's bundled tables, the pool/test split, standardisation, the data fingerprint.
- :mod:`.model`: the one network both tasks use (a small MLP), its seeded training loop and its committees
  (MC dropout and bootstrap members).
- :mod:`.classification`: the ``tabular_classification`` task (wine, breast cancer, iris, digits).
- :mod:`.regression`: the ``tabular_regression`` task (diabetes, Friedman #1).
- :mod:`.scorers`: ``committee_variance``, query-by-committee for regression.

Nothing here imports activelab beyond its stable protocol (``activelab.protocol``), the ``Manifest`` class
(``activelab.registry``) and, in the tests, the conformance kit (``activelab.testing``).
"""

__version__ = "0.1.0"
