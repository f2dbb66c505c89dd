"""CNN classifiers (lens vs non-lens) for 64x64 stamps, and the metadata guard.

Every model returns ONE logit per sample, shape ``(B,)``, from
``forward(x, meta=None)`` with ``x`` of shape ``(B, C, 64, 64)`` (float32, C = 3
for the g, r, z stamp or C = 6 for the stamp followed by its paired control
stamp) and ``meta`` of shape ``(B, n_meta)`` (float32, already standardised by
:class:`MetaScaler`) or ``None`` when the model was built with ``n_meta == 0``.

Architectures (``build_model(arch, ...)``):

``small_cnn``
    Four 3x3 conv blocks of width w, 2w, 4w, 4w (BatchNorm + ReLU), each with
    stride 2 (64 -> 32 -> 16 -> 8 -> 4), then global average pooling. About
    241k parameters at w = 32; one forward + backward of a 64-stamp batch takes
    ~40 ms on 2 CPU cores. (Keeping the first block at stride 1 costs ~5x the
    time for the same parameter count, so the first block downsamples too; a
    3x3 kernel at stride 2 still sees every input pixel.)
``resnet18``
    ``torchvision.models.resnet18(weights=None)`` with conv1 replaced by a
    3x3 stride-1 convolution and the max-pool removed, the usual CIFAR-style
    adaptation for small inputs: stages run at 64, 32, 16, 8 pixels.
    With ``stem="stock"`` torchvision's own 7x7 stride-2 conv1 and max-pool are
    kept: stages at 16, 8, 4, 2 pixels, ~11x cheaper to train on a CPU.
``convnext_tiny``
    ``torchvision.models.convnext_tiny(weights=None)`` with the stem changed
    from Conv2d(k=4, s=4) to Conv2d(C, 96, k=2, s=2) (+ the stock LayerNorm2d).
    For a 64x64 stamp the stages then run at 32, 16, 8, 4 pixels
    (:data:`CONVNEXT_STAGE_SIZES`) instead of 16, 8, 4, 2 with the stock stem:
    a patchify stem of 4 pixels (1.05 arcsec) would fold a whole small
    Einstein ring into one token, and a 2x2 last stage leaves almost nothing
    for the 7x7 depthwise kernels. The head keeps torchvision's final
    LayerNorm2d(768): avgpool -> LayerNorm2d(768) -> flatten -> dropout ->
    (metadata fusion) -> Linear -> 1 logit. (The original project replaced the
    whole classifier with Identity and thereby lost that LayerNorm.)
    With ``stem="stock"`` the k=4, s=4 patchify stem is kept (stages at 16, 8,
    4, 2 pixels, ~4x cheaper).

``stem`` (params ``train.stem``, :data:`STEMS`): ``adapted`` (the small-stamp
stems above, the seeds' full-scale runs) or ``stock`` (torchvision's stems
unchanged: the same named architecture at a fraction of the cost, for the
generations' CPU scale, where a 2-core machine trains the adapted ConvNeXt-Tiny
at ~8 s per batch of 64). ``small_cnn`` has one stem and ignores it.

Metadata fusion (``n_meta > 0``): ``concat(image_features, MLP(meta))`` with
MLP = Linear(n_meta, 32)-ReLU-Linear(32, 32)-ReLU, then dropout, then
Linear(-> 1). With ``n_meta == 0`` the head is dropout -> Linear(-> 1).

No pretrained weights are ever loaded (``weights=None``): the pipeline runs
offline, and ImageNet statistics do not fit normalised astronomical stamps.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torchvision

ARCHS = ("small_cnn", "resnet18", "convnext_tiny")
#: Valid ``stem`` values of :func:`build_model` (params ``train.stem``).
STEMS = ("adapted", "stock")
INPUT_CHANNELS = (3, 6)
META_HIDDEN = 32

#: Spatial side (pixels) of the stem output and of each ConvNeXt stage for a
#: 64x64 input with the adapted k=2, s=2 stem: stem, stage1..stage4.
CONVNEXT_STAGE_SIZES = {"stem": 32, "stage1": 32, "stage2": 16, "stage3": 8, "stage4": 4}

# --------------------------------------------------------------------------
# Forbidden-metadata guard
# --------------------------------------------------------------------------

#: Metadata patterns (fnmatch, case-insensitive) that are refused, with why.
#: They are derived from the injection or from the label, so a model fed with
#: them would learn the answer key rather than the image.
FORBIDDEN_META_PATTERNS: dict[str, str] = {
    "arc_snr*": "arc S/N is measured on the injected arc (zero or undefined for controls)",
    "theta_e*": "Einstein radius is an injection parameter (absent for controls)",
    "src_*": "source properties are injection parameters",
    "shear*": "external shear is an injection parameter",
    "gamma1": "shear component is an injection parameter",
    "gamma2": "shear component is an injection parameter",
    "magnification*": "magnification is computed from the injected lens model",
    "lens_*": "lens-model parameters are injection parameters",
    "is_control": "is_control is the label itself",
    "label": "label is the training target",
    "config_id": "config_id identifies the injection configuration (controls have none)",
    "sample_id": "sample_id is a row identifier, not a physical property",
    "pair_id": "pair_id is a pairing identifier, not a physical property",
    "replicate": "replicate is the injection replicate index",
    "cutout_ok": "cutout_ok is a data-quality flag set by the pipeline",
    "bad_pixel_frac": "bad_pixel_frac is a pipeline data-quality measure, not a survey property",
}

#: Metadata columns that may be fused into the head: survey observing
#: conditions that are the same for a lens and a non-lens at that position.
ALLOWED_META_COLS: frozenset[str] = frozenset(
    {
        "psfsize_g", "psfsize_r", "psfsize_z",
        "psfdepth_g", "psfdepth_r", "psfdepth_z",
        "ebv",
        "nobs_g", "nobs_r", "nobs_z",
        "psf_fwhm_used_g", "psf_fwhm_used_r", "psf_fwhm_used_z",
    }
)


def check_meta_cols(cols: Iterable[str]) -> list[str]:
    """Validate metadata column names; return them as a list (names unchanged).

    Deny patterns are checked first (case-insensitive): a column matching one
    of :data:`FORBIDDEN_META_PATTERNS` raises ``ValueError`` naming the column
    and the reason. Any other column must be in :data:`ALLOWED_META_COLS`
    (case-insensitive) or ``ValueError`` is raised naming it and listing the
    allowed ones. Duplicates are refused too.
    """
    if isinstance(cols, str):
        raise TypeError(f"meta cols must be a list of names, not the string {cols!r}")
    out = [c for c in cols]
    seen: set[str] = set()
    for c in out:
        if not isinstance(c, str):
            raise TypeError(f"meta column names must be strings, got {c!r}")
        low = c.lower()
        for pat, why in FORBIDDEN_META_PATTERNS.items():
            if fnmatch.fnmatchcase(low, pat):
                raise ValueError(
                    f"metadata column {c!r} is forbidden (matches {pat!r}): {why}; "
                    "it would leak the injection/label into the classifier"
                )
        if low not in ALLOWED_META_COLS:
            raise ValueError(
                f"metadata column {c!r} is not in the allowlist; allowed: "
                f"{sorted(ALLOWED_META_COLS)}"
            )
        if low in seen:
            raise ValueError(f"metadata column {c!r} is given more than once")
        seen.add(low)
    return out


# --------------------------------------------------------------------------
# Metadata standardisation
# --------------------------------------------------------------------------


def _column_matrix(data: Any, cols: Sequence[str]) -> np.ndarray:
    """(N, k) float64 matrix from a 2-D array (columns in ``cols`` order) or a
    name-indexable table (dict of arrays, pandas DataFrame, pyarrow Table)."""
    if isinstance(data, np.ndarray) or torch.is_tensor(data):
        arr = np.asarray(data, dtype=np.float64)
        if arr.ndim == 1 and len(cols) == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != len(cols):
            raise ValueError(
                f"meta array has shape {arr.shape}, expected (N, {len(cols)}) for columns {list(cols)}"
            )
        return arr
    columns = []
    for c in cols:
        try:
            v = data[c]
        except (KeyError, IndexError) as e:
            raise KeyError(f"metadata column {c!r} is missing from the data") from e
        if hasattr(v, "to_numpy"):
            v = v.to_numpy()
        columns.append(np.asarray(v, dtype=np.float64).reshape(-1))
    if not columns:
        return np.zeros((0, 0), dtype=np.float64)
    n = {len(v) for v in columns}
    if len(n) != 1:
        raise ValueError(f"metadata columns {list(cols)} have different lengths {sorted(n)}")
    return np.stack(columns, axis=1)


def _check_finite(arr: np.ndarray, cols: Sequence[str], what: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        j = int(np.argmax(bad.any(axis=0)))
        raise ValueError(
            f"metadata column {cols[j]!r} has {int(bad[:, j].sum())} non-finite value(s) in the {what} data"
        )


class MetaScaler:
    """Per-column standardisation of metadata: ``(x - mean) / std``.

    Fit on training rows only (``MetaScaler.fit(train_table, cols)``); the
    std is floored at ``STD_FLOOR`` so a constant column maps to 0. The state
    is a plain JSON-able dict (``state_dict()`` / ``MetaScaler.from_state``)
    so checkpoints carry it. Non-finite values raise ``ValueError`` naming the
    column, both when fitting and when transforming.
    """

    STD_FLOOR = 1e-6

    def __init__(self, cols: Sequence[str], mean: Sequence[float], std: Sequence[float]):
        self.cols = check_meta_cols(cols)
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        k = len(self.cols)
        if self.mean.shape != (k,) or self.std.shape != (k,):
            raise ValueError(
                f"MetaScaler needs {k} means and stds for {self.cols}, got {self.mean.shape} and {self.std.shape}"
            )
        _check_finite(self.mean[None, :], self.cols, "scaler mean")
        _check_finite(self.std[None, :], self.cols, "scaler std")
        if (self.std <= 0).any():
            raise ValueError(f"MetaScaler std must be > 0, got {self.std.tolist()} for {self.cols}")

    @classmethod
    def fit(cls, data: Any, cols: Sequence[str]) -> "MetaScaler":
        """Fit mean/std (population std, ddof=0) of ``cols`` over the rows of ``data``."""
        cols = check_meta_cols(cols)
        arr = _column_matrix(data, cols)
        if len(cols) and arr.shape[0] == 0:
            raise ValueError(f"cannot fit MetaScaler for {cols} on zero rows")
        _check_finite(arr, cols, "training")
        if not cols:
            return cls([], [], [])
        mean = arr.mean(axis=0)
        std = np.maximum(arr.std(axis=0), cls.STD_FLOOR)
        return cls(cols, mean, std)

    @property
    def n_meta(self) -> int:
        return len(self.cols)

    def transform(self, data: Any) -> np.ndarray:
        """Standardised (N, k) float32 matrix for ``data`` (same forms as ``fit``)."""
        arr = _column_matrix(data, self.cols)
        if not self.cols:
            return np.zeros((arr.shape[0], 0), dtype=np.float32)
        _check_finite(arr, self.cols, "input")
        return ((arr - self.mean) / self.std).astype(np.float32)

    def state_dict(self) -> dict[str, list]:
        return {
            "cols": list(self.cols),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> "MetaScaler":
        missing = {"cols", "mean", "std"} - set(d)
        if missing:
            raise ValueError(f"MetaScaler state lacks keys {sorted(missing)}")
        return cls(list(d["cols"]), list(d["mean"]), list(d["std"]))

    def __repr__(self) -> str:
        return f"MetaScaler(cols={self.cols})"


# --------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Compact CPU-friendly backbone: 4 x [Conv3x3 s2 - BN - ReLU] + global avg pool."""

    def __init__(self, input_channels: int = 3, width: int = 32):
        super().__init__()
        if width < 1:
            raise ValueError(f"small_cnn width must be >= 1, got {width}")
        chans = [width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        c_in = input_channels
        for c_out in chans:
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _resnet18(input_channels: int, stem: str = "adapted") -> tuple[nn.Module, int]:
    m = torchvision.models.resnet18(weights=None)
    if stem == "stock":  # torchvision's 7x7 / 2 conv1 (+ max-pool), for the stamp's channel count
        m.conv1 = nn.Conv2d(input_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        m.conv1 = nn.Conv2d(input_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    feat = m.fc.in_features  # 512
    m.fc = nn.Identity()  # the head (dropout, fusion, Linear) lives in LensClassifier
    return m, feat


def _convnext_tiny(input_channels: int, stem: str = "adapted") -> tuple[nn.Module, int]:
    m = torchvision.models.convnext_tiny(weights=None)
    layers = m.features[0]
    old = layers[0]
    k = 4 if stem == "stock" else 2  # stock: the k=4, s=4 patchify stem, for the stamp's channel count
    conv = nn.Conv2d(input_channels, old.out_channels, kernel_size=k, stride=k, bias=True)
    nn.init.trunc_normal_(conv.weight, std=0.02)  # torchvision's ConvNeXt init
    nn.init.zeros_(conv.bias)
    layers[0] = conv  # layers[1] (LayerNorm2d(96)) is kept
    ln = m.classifier[0]  # LayerNorm2d(768): kept on the forward path
    feat = m.classifier[2].in_features  # 768
    # model(x) = classifier(avgpool(features(x))) = flatten(LayerNorm2d(avgpool(...)))
    m.classifier = nn.Sequential(ln, nn.Flatten(1))
    return m, feat


# --------------------------------------------------------------------------
# Classifier with optional metadata fusion
# --------------------------------------------------------------------------


class LensClassifier(nn.Module):
    """Backbone -> pooled features -> [concat MLP(meta)] -> dropout -> Linear -> 1 logit."""

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        *,
        arch: str,
        input_channels: int,
        n_meta: int = 0,
        dropout: float = 0.0,
        width: int | None = None,
        stem: str | None = None,
    ):
        super().__init__()
        self.arch = arch
        self.input_channels = int(input_channels)
        self.n_meta = int(n_meta)
        self.feat_dim = int(feat_dim)
        self.config = {
            "arch": arch,
            "input_channels": self.input_channels,
            "dropout": float(dropout),
            "n_meta": self.n_meta,
            "width": width,
            "stem": stem,
        }
        self.backbone = backbone
        if self.n_meta > 0:
            self.meta_mlp: nn.Module | None = nn.Sequential(
                nn.Linear(self.n_meta, META_HIDDEN),
                nn.ReLU(inplace=True),
                nn.Linear(META_HIDDEN, META_HIDDEN),
                nn.ReLU(inplace=True),
            )
            head_in = self.feat_dim + META_HIDDEN
        else:
            self.meta_mlp = None
            head_in = self.feat_dim
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(head_in, 1)
        nn.init.zeros_(self.fc.bias)

    def features(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, F) vector the final Linear sees (before dropout)."""
        if x.ndim != 4 or x.shape[1] != self.input_channels:
            raise ValueError(
                f"{self.arch}: expected input of shape (B, {self.input_channels}, H, W), got {tuple(x.shape)}"
            )
        f = self.backbone(x)
        if self.meta_mlp is None:
            if meta is not None and meta.numel() > 0:
                raise ValueError(
                    f"{self.arch} was built with n_meta=0 but meta of shape {tuple(meta.shape)} was passed"
                )
            return f
        if meta is None:
            raise ValueError(
                f"{self.arch} was built with n_meta={self.n_meta} but meta=None was passed; "
                f"pass a (B, {self.n_meta}) standardised metadata tensor"
            )
        if meta.ndim != 2 or meta.shape[0] != x.shape[0] or meta.shape[1] != self.n_meta:
            raise ValueError(
                f"{self.arch}: meta must have shape ({x.shape[0]}, {self.n_meta}), got {tuple(meta.shape)}"
            )
        # cast to the parameter dtype (autocast, if on, then picks the compute dtype)
        m = self.meta_mlp(meta.to(self.fc.weight.dtype))
        return torch.cat([f, m.to(f.dtype)], dim=1)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x, meta)))[:, 0]


def build_model(
    arch: str,
    input_channels: int = 3,
    dropout: float = 0.0,
    n_meta: int = 0,
    width: int = 32,
    stem: str = "adapted",
) -> LensClassifier:
    """Build a lens classifier returning one logit per sample (shape (B,)).

    ``arch``: one of :data:`ARCHS`; ``input_channels``: 3 or 6; ``dropout``:
    probability before the final Linear; ``n_meta``: number of standardised
    metadata columns fused into the head (0: none); ``width``: base width of
    ``small_cnn`` (ignored by the torchvision architectures); ``stem``: one of
    :data:`STEMS` for ``resnet18`` / ``convnext_tiny`` (ignored by ``small_cnn``).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    if input_channels not in INPUT_CHANNELS:
        raise ValueError(
            f"input_channels must be 3 (g,r,z stamp) or 6 (stamp + paired control), got {input_channels!r}"
        )
    if not (0.0 <= float(dropout) < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if int(n_meta) != n_meta or n_meta < 0:
        raise ValueError(f"n_meta must be a non-negative integer, got {n_meta!r}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
    if arch == "small_cnn":
        backbone: nn.Module = SmallCNN(input_channels, int(width))
        feat = backbone.out_dim
    elif arch == "resnet18":
        backbone, feat = _resnet18(input_channels, stem)
    else:
        backbone, feat = _convnext_tiny(input_channels, stem)
    return LensClassifier(
        backbone,
        feat,
        arch=arch,
        input_channels=input_channels,
        n_meta=int(n_meta),
        dropout=float(dropout),
        width=int(width) if arch == "small_cnn" else None,
        stem=None if arch == "small_cnn" else stem,
    )


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def describe(model: nn.Module) -> dict[str, Any]:
    """Parameter count and configuration of a model, as a JSON-able dict."""
    d: dict[str, Any] = {
        "n_params": count_params(model),
        "n_trainable": count_params(model, trainable_only=True),
    }
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict):
        d.update(cfg)
    return d


__all__ = [
    "ALLOWED_META_COLS",
    "ARCHS",
    "CONVNEXT_STAGE_SIZES",
    "FORBIDDEN_META_PATTERNS",
    "INPUT_CHANNELS",
    "LensClassifier",
    "MetaScaler",
    "STEMS",
    "SmallCNN",
    "build_model",
    "check_meta_cols",
    "count_params",
    "describe",
]
