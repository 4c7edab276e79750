"""Task-independent strategies, registered by the core plugin's manifest: uncertainty scorers
(:mod:`.uncertainty`), scorers that look at the embedding space, density and k-center (:mod:`.diversity`),
selectors (:mod:`.selectors`) and the simulated oracle (:mod:`.simulated`). The kernel imports none of them;
plugins reuse the measures and helpers."""
