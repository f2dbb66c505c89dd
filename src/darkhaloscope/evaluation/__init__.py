"""Phase 5 evaluation: the metrics report, the shortcut audit and saliency.

- :mod:`~darkhaloscope.evaluation.report`: calibration, val-derived thresholds, known-lens recall,
  stratified completeness, the trivial-feature shortcut audit, saliency galleries.
- :mod:`~darkhaloscope.evaluation.saliency`: Grad-CAM of the lens logit.

Rate metrics themselves live in :mod:`darkhaloscope.metrics` (shared with training).
"""

from darkhaloscope.evaluation.report import (
    calibration,
    known_lens_recall,
    read_rows,
    saliency_gallery,
    shortcut_auroc,
    stratified_rows,
    trivial_features,
    val_thresholds,
    write_csv,
)
from darkhaloscope.evaluation.saliency import grad_cam

__all__ = [
    "calibration", "known_lens_recall", "read_rows", "saliency_gallery", "shortcut_auroc", "stratified_rows",
    "trivial_features", "val_thresholds", "write_csv", "grad_cam",
]
