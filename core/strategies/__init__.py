"""Task-independent strategies, registered by the core plugin's manifest: uncertainty scorers
(:mod:`.uncertainty`), scorers that look at the embedding space, density and k-center (:mod:`.diversity`),
batch-aware scorers BADGE and Cluster-Margin (:mod:`.batch`), BatchBALD (:mod:`.batchbald`), the low-budget
TypiClust and ProbCover (:mod:`.coldstart`), information per unit of cost (:mod:`.cost`), selectors (:mod:`.selectors`,
and stochastic batch acquisition in :mod:`.stochastic`), stopping criteria (:mod:`.stopping`) and the simulated
oracle (:mod:`.simulated`). The kernel imports none of them; plugins reuse the measures and helpers."""
