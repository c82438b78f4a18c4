"""The evaluation protocol (whole-image and sliding-window inference with test-time
augmentation) and the scores of a split from one confusion matrix. Plain torch, no Lightning."""

from .inference import InferenceConfig, format_scores_table, infer_probabilities, scores_report
from .metrics import DEFAULT_MIOU_OVER, MIOU_OVER, scores_from_confusion

__all__ = [
    "DEFAULT_MIOU_OVER",
    "MIOU_OVER",
    "InferenceConfig",
    "format_scores_table",
    "infer_probabilities",
    "scores_from_confusion",
    "scores_report",
]
