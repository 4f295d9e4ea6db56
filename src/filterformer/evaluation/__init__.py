"""Metrics of anomaly maps, computed one image at a time (no torch needed).

AU-PRO (:mod:`.aupro`), SegF1/ClassF1 (:mod:`.segf1`), image and pixel AUROC/AP
(:mod:`.image_metrics`), threshold rules (:mod:`.thresholds`), reports (:mod:`.report`),
figures (:mod:`.figures`) and the evaluation protocols with the INP-Former metric set
(:mod:`.protocol`).
"""

from filterformer.evaluation.aupro import ProAccumulator, ProResult, au_pro
from filterformer.evaluation.segf1 import F1Counts, SegF1Accumulator, binarize, class_f1
from filterformer.evaluation.thresholds import Threshold, read_thresholds, write_thresholds

__all__ = [
    "F1Counts",
    "ProAccumulator",
    "ProResult",
    "SegF1Accumulator",
    "Threshold",
    "au_pro",
    "binarize",
    "class_f1",
    "read_thresholds",
    "write_thresholds",
]
