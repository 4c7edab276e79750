"""activelab: active learning for vision, language and speech.

The kernel is the protocol (:mod:`activelab.protocol`) with its optional hooks (:mod:`activelab.hooks`), the loop
that drives any task (:mod:`activelab.loop`) in a run folder (:mod:`activelab.run`), the durable label store
(:mod:`activelab.store`), pools, recipes, the plugin registry and the command line. Everything else registers
through the ``activelab.plugins`` entry-point group: the core plugin's strategies (:mod:`activelab.strategies`)
and labelling tools (:mod:`activelab.labelling`), and the task plugins under :mod:`activelab.plugins`.
"""
__version__ = "0.1.0"
