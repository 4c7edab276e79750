"""Vision plugin manifest: component names mapped to lazy import strings."""
from activelab.registry import Manifest

MANIFEST = Manifest(
    name="vision",
    description="image classification with CEAL pseudo-labelling",
    components={
        "task": {
            "classification": "activelab.plugins.vision.classification:ClassificationTask",
        },
    },
)
