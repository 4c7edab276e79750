"""NLP plugin manifest: component names mapped to lazy import strings."""
from activelab.registry import Manifest

MANIFEST = Manifest(
    name="nlp",
    description="neural machine translation with competence-based curriculum active learning",
    components={
        "task": {
            "translation": "activelab.plugins.nlp.translation:TranslationTask",
        },
        "scorer": {
            "nll": "activelab.plugins.nlp.scorers:GreedyNLL",
            "mc_disagreement": "activelab.plugins.nlp.scorers:MCDisagreement",
            "curriculum_nll": "activelab.plugins.nlp.scorers:CurriculumNLL",
        },
    },
)
