"""Vision plugin, object detection: MI-AOD (multiple instance active object detection) on COCO-format data."""
