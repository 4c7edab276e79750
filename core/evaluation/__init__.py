"""Comparing strategies on finished runs: ``activelab compare`` (:mod:`.compare`, the verb the core manifest
contributes), its statistics (:mod:`.statistics`: intervals over seeds, area under the budget curve, labels to
reach a target, the pairwise penalty matrix) and how they are shown (:mod:`.tables`: CSV, markdown, plots).

It stands on the kernel's run API (recipes, run folders, the loop, the launcher for several processes); the
kernel imports nothing from it.
"""
