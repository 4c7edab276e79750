"""Vision plugin: image classification (CEAL). Components are listed in :mod:`.manifest` and imported lazily."""
