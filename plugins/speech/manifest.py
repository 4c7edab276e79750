"""Speech plugin manifest: component names mapped to lazy import strings."""
from activelab.registry import Manifest

MANIFEST = Manifest(
    name="speech",
    description="speech recognition (character CTC) with loss-prediction active learning",
    components={
        "task": {"recognition": "activelab.plugins.speech.task:RecognitionTask"},
        "scorer": {      # predicted_loss, the loss-prediction module's estimate, is the core's (shared with vision)
            "ctc_least_confidence": "activelab.plugins.speech.scorers:CTCLeastConfidence",
            "ctc_entropy": "activelab.plugins.speech.scorers:CTCEntropy",
        },
    },
)
