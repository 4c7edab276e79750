"""Vision plugin manifest: component names mapped to lazy import strings."""
from activelab.registry import Manifest

MANIFEST = Manifest(
    name="vision",
    description="image classification with CEAL pseudo-labelling; image restoration with on-demand learning",
    components={
        "task": {
            "classification": "activelab.plugins.vision.classification:ClassificationTask",
            "restoration": "activelab.plugins.vision.restoration:RestorationTask",
        },
        "scorer": {
            "inverse_psnr": "activelab.plugins.vision.ondemand:InversePSNR",
        },
        "selector": {
            "schedule": "activelab.plugins.vision.ondemand:Schedule",
        },
        "oracle": {
            "corruptor": "activelab.plugins.vision.ondemand:Corruptor",
        },
    },
)
