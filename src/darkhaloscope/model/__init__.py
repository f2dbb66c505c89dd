"""Phase 5: the lens classifier - preprocessing, data loading, networks, training, scoring, mining.

Stamps are float32 nanomaggies, (3, 64, 64) pixels per row in bands g, r, z; a 6-channel
(paired) input is the stamp followed by its control stamp. Importing this package loads the
light public API below; the training loop, scoring, mining and the torchrun plumbing are
imported from their modules by the stages that run them (mining pulls in the survey readers,
which the train stage must not depend on).

Re-exported here:

- :mod:`~darkhaloscope.model.preprocess`: the ONE preprocessing recipe, carried by every
  checkpoint: ``Preprocess`` (``from_checkpoint``, ``to_dict``, ``apply``), ``NormConfig``,
  ``normalize``, ``robust_stats``, ``augment``, ``STAMP_CHANNELS``, ``CTRL_CHANNELS``.
- :mod:`~darkhaloscope.model.checkpoint`: ``save_checkpoint``, ``load_checkpoint``,
  ``model_from_checkpoint`` (model, Preprocess).
- :mod:`~darkhaloscope.model.nets`: ``build_model`` (``ARCHS``), ``LensClassifier``,
  ``MetaScaler``, ``check_meta_cols`` (the forbidden-metadata guard), ``ALLOWED_META_COLS``.
- :mod:`~darkhaloscope.model.losses`: ``build_loss`` (``LOSSES``), ``FocalLoss``.
- :mod:`~darkhaloscope.model.inference`: ``device_and_amp``, ``predict`` (float32 logits),
  ``sigmoid`` (float64 scores).
- :mod:`~darkhaloscope.model.loader`: ``StampIndex`` (kept rows, dropped rows counted by
  ``DROP_REASONS``), ``StampDataset``, ``make_loader``.

Imported from their modules:

- :mod:`~darkhaloscope.model.train`: ``train``, ``fit_stage``, ``Setup``, ``evaluate_scores``
  (stage ``train``).
- :mod:`~darkhaloscope.model.score`: ``score_files``, ``score_known_files``, ``STRATA``
  (stage ``score``).
- :mod:`~darkhaloscope.model.mining`: ``mine``, ``run_mining``, ``resolve_model`` (stage ``mine``).
- :mod:`~darkhaloscope.model.distributed`: ``init_distributed``, ``is_main_process``,
  ``rank_world``, ``barrier``, ``sync_optimizer`` (torchrun / DDP).
"""

from darkhaloscope.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from darkhaloscope.model.inference import device_and_amp, predict, sigmoid
from darkhaloscope.model.loader import DROP_REASONS, StampDataset, StampIndex, make_loader
from darkhaloscope.model.losses import LOSSES, FocalLoss, build_loss
from darkhaloscope.model.nets import ALLOWED_META_COLS, ARCHS, LensClassifier, MetaScaler, build_model, check_meta_cols
from darkhaloscope.model.preprocess import (
    CTRL_CHANNELS,
    STAMP_CHANNELS,
    NormConfig,
    Preprocess,
    augment,
    normalize,
    robust_stats,
)

__all__ = [
    "CTRL_CHANNELS", "STAMP_CHANNELS", "NormConfig", "Preprocess", "augment", "normalize", "robust_stats",
    "load_checkpoint", "model_from_checkpoint", "save_checkpoint",
    "ALLOWED_META_COLS", "ARCHS", "LensClassifier", "MetaScaler", "build_model", "check_meta_cols",
    "LOSSES", "FocalLoss", "build_loss",
    "device_and_amp", "predict", "sigmoid",
    "DROP_REASONS", "StampDataset", "StampIndex", "make_loader",
]
