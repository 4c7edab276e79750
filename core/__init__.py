"""activelab: active learning for vision, language and speech.

The core is the protocol (:mod:`activelab.protocol`), the loop that drives any task (:mod:`activelab.loop`), the
durable label store (:mod:`activelab.store`), recipes (:mod:`activelab.recipe`) and the classic informativeness
measures (:mod:`activelab.scorers`). Task plugins live under :mod:`activelab.plugins` and register through the
``activelab.plugins`` entry-point group.
"""
__version__ = "0.1.0"
