"""Task plugins shipped with activelab. Each registers through the ``activelab.plugins`` entry-point group."""
