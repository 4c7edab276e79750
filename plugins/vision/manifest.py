"""Vision plugin manifest: component names mapped to lazy import strings."""
from activelab.registry import Manifest

MANIFEST = Manifest(
    name="vision",
    description="image classification with CEAL pseudo-labelling; object detection with MI-AOD; image restoration "
                "with on-demand learning",
    components={
        "task": {
            "classification": "activelab.plugins.vision.classification:ClassificationTask",
            # image regression (issue 15): the rotation angle of digits / MNIST images
            "rotation": "activelab.plugins.vision.regression:RotationTask",
            "restoration": "activelab.plugins.vision.restoration:RestorationTask",
            "detection": "activelab.plugins.vision.detection.task:DetectionTask",
        },
        "scorer": {
            "inverse_psnr": "activelab.plugins.vision.ondemand:InversePSNR",
            # ASAL (issue 18): real pool items nearest to generated high-entropy images
            "asal": "activelab.plugins.vision.asal:ASAL",
            "miaod": "activelab.plugins.vision.detection.scorers:MIAODUncertainty",
            "anchor_entropy": "activelab.plugins.vision.detection.scorers:AnchorEntropy",
        },
        "selector": {
            "schedule": "activelab.plugins.vision.ondemand:Schedule",
        },
        "oracle": {
            "corruptor": "activelab.plugins.vision.ondemand:Corruptor",
        },
    },
    commands={
        # a backbone pretrained on a labelled source set that ships here, for model: {kind: torchvision, weights}
        "pretrain": "activelab.plugins.vision.commands:PRETRAIN",
    },
)
