"""Tests of darkhaloscope.model.nets: architectures, head, metadata guard and scaler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from torchvision.models.convnext import LayerNorm2d

from darkhaloscope.model.nets import (
    ALLOWED_META_COLS,
    ARCHS,
    CONVNEXT_STAGE_SIZES,
    MetaScaler,
    build_model,
    check_meta_cols,
    count_params,
    describe,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("channels", [3, 6])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_is_one_logit_per_sample(arch, channels):
    m = build_model(arch, input_channels=channels, dropout=0.1).eval()
    with torch.no_grad():
        y = m(torch.randn(2, channels, 64, 64))
    assert y.shape == (2,)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_batch_of_one_keeps_batch_dim():
    m = build_model("small_cnn").eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1,)


def test_parameter_counts():
    small = build_model("small_cnn", width=32)
    assert 100_000 <= count_params(small) <= 300_000
    d = describe(small)
    assert d["n_params"] == count_params(small) == d["n_trainable"]
    assert d["arch"] == "small_cnn" and d["input_channels"] == 3
    json.dumps(d)
    assert 10_000_000 < count_params(build_model("resnet18")) < 12_000_000


def test_small_cnn_trains_one_step():
    m = build_model("small_cnn", input_channels=6).train()
    x = torch.randn(8, 6, 64, 64)
    loss = nn.functional.binary_cross_entropy_with_logits(m(x), torch.rand(8))
    loss.backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_arch_and_channels():
    with pytest.raises(ValueError) as e:
        build_model("vit")
    for a in ARCHS:
        assert a in str(e.value)
    with pytest.raises(ValueError, match="input_channels"):
        build_model("small_cnn", input_channels=4)
    m = build_model("small_cnn", input_channels=6)
    with pytest.raises(ValueError, match="6"):
        m(torch.randn(2, 3, 64, 64))


# ---------------------------------------------------------------- resnet18


@pytest.mark.parametrize("channels", [3, 6])
def test_resnet18_stem(channels):
    m = build_model("resnet18", input_channels=channels)
    conv1 = m.backbone.conv1
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.in_channels == channels and conv1.out_channels == 64
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.bias is None
    assert isinstance(m.backbone.maxpool, nn.Identity)
    assert m.feat_dim == 512
    assert m.fc.in_features == 512 and m.fc.out_features == 1


@pytest.mark.parametrize("arch,conv,size", [("resnet18", lambda m: m.backbone.conv1, (7, 2, 3)),
                                             ("convnext_tiny", lambda m: m.backbone.features[0][0], (4, 4, 0))])
@pytest.mark.parametrize("channels", [3, 6])
def test_stock_stems_are_torchvisions(arch, conv, size, channels):
    """train.stem: stock keeps torchvision's stem geometry (for the stamp's channel count)."""
    m = build_model(arch, input_channels=channels, stem="stock")
    c = conv(m)
    k, s, pad = size
    assert c.in_channels == channels and c.kernel_size == (k, k) and c.stride == (s, s) and c.padding == (pad, pad)
    if arch == "resnet18":
        assert isinstance(m.backbone.maxpool, nn.MaxPool2d)
    assert m.config["stem"] == "stock"
    assert build_model(arch, input_channels=channels).config["stem"] == "adapted"
    with torch.no_grad():
        assert m.eval()(torch.randn(2, channels, 64, 64)).shape == (2,)


def test_bad_stem_is_refused_and_small_cnn_ignores_it():
    with pytest.raises(ValueError, match="stem must be one of adapted, stock"):
        build_model("resnet18", stem="patchify")
    assert build_model("small_cnn", stem="stock").config["stem"] is None


def test_checkpoint_rebuilds_the_stem(monkeypatch):
    """model_from_checkpoint builds the stem the checkpoint was trained with (and 'adapted' for old ones)."""
    import darkhaloscope.model.checkpoint as C

    monkeypatch.setattr(C.Preprocess, "from_checkpoint", staticmethod(lambda ck: None))  # only the model here
    torch.manual_seed(1)
    m = build_model("resnet18", stem="stock").eval()
    got, _ = C.model_from_checkpoint({"model_config": dict(m.config), "model_state": m.state_dict()})
    assert isinstance(got.backbone.maxpool, nn.MaxPool2d)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(got(x), m(x))
    old = {k: v for k, v in m.config.items() if k != "stem"}  # a checkpoint from before train.stem
    with pytest.raises(RuntimeError):  # means the adapted stem: the stock weights do not fit it
        C.model_from_checkpoint({"model_config": old, "model_state": m.state_dict()})


# ---------------------------------------------------------------- convnext


@pytest.fixture(scope="module")
def convnext():
    torch.manual_seed(0)
    return build_model("convnext_tiny", input_channels=3).eval()


def test_convnext_stem_and_stage_sizes(convnext):
    stem = convnext.backbone.features[0]
    assert stem[0].kernel_size == (2, 2) and stem[0].stride == (2, 2)
    assert stem[0].in_channels == 3 and stem[0].out_channels == 96
    assert isinstance(stem[1], LayerNorm2d)

    f = convnext.backbone.features
    names = {0: "stem", 1: "stage1", 3: "stage2", 5: "stage3", 7: "stage4"}
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [
        f[i].register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, tuple(out.shape)))
        for i, n in names.items()
    ]
    try:
        with torch.no_grad():
            convnext(torch.randn(2, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    channels = {"stem": 96, "stage1": 96, "stage2": 192, "stage3": 384, "stage4": 768}
    for n in names.values():
        s = CONVNEXT_STAGE_SIZES[n]
        assert seen[n] == (2, channels[n], s, s), n
    assert CONVNEXT_STAGE_SIZES == {"stem": 32, "stage1": 32, "stage2": 16, "stage3": 8, "stage4": 4}


def test_convnext_six_channel_stem():
    m = build_model("convnext_tiny", input_channels=6)
    assert m.backbone.features[0][0].in_channels == 6


def test_convnext_final_layernorm_on_forward_path(convnext):
    head = convnext.backbone.classifier
    ln = head[0]
    assert isinstance(ln, LayerNorm2d) and tuple(ln.normalized_shape) == (768,)
    assert not any(isinstance(mod, nn.Linear) for mod in head)  # the 1000-way Linear is gone
    calls = []
    h = ln.register_forward_hook(lambda mod, inp, out: calls.append((tuple(inp[0].shape), out)))
    x = torch.randn(2, 3, 64, 64)
    try:
        with torch.no_grad():
            feats = convnext.features(x)
            y0 = convnext(x)
    finally:
        h.remove()
    # called on the pooled (B, 768, 1, 1) features, and its output is what the head sees
    assert [c[0] for c in calls] == [(2, 768, 1, 1), (2, 768, 1, 1)]
    assert torch.allclose(feats, calls[0][1].flatten(1))
    # per-sample features are normalised (weight 1, bias 0 at init)
    assert torch.allclose(feats.mean(1), torch.zeros(2), atol=1e-4)
    assert torch.allclose(feats.var(1, unbiased=False), torch.ones(2), atol=1e-2)
    # and changing its affine bias changes the logit
    with torch.no_grad():
        ln.bias.add_(convnext.fc.weight[0, :768])
        try:
            y1 = convnext(x)
        finally:
            ln.bias.sub_(convnext.fc.weight[0, :768])
    assert not torch.allclose(y0, y1)


# ---------------------------------------------------------------- metadata fusion


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_meta_fusion_changes_output_and_is_required(arch):
    m = build_model(arch, input_channels=3, n_meta=2, dropout=0.2).eval()
    assert m.fc.in_features == m.feat_dim + 32
    x = torch.randn(2, 3, 64, 64)
    meta = torch.zeros(2, 2)
    with torch.no_grad():
        y0 = m(x, meta)
        y1 = m(x, meta + torch.tensor([[3.0, -2.0], [1.0, 4.0]]))
    assert y0.shape == (2,)
    assert not torch.allclose(y0, y1)
    with pytest.raises(ValueError, match="meta=None"):
        m(x)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        m(x, torch.zeros(2, 3))


def test_meta_passed_to_model_without_meta_is_refused():
    m = build_model("small_cnn", n_meta=0)
    with pytest.raises(ValueError, match="n_meta=0"):
        m(torch.randn(2, 3, 64, 64), torch.zeros(2, 2))


# ---------------------------------------------------------------- bf16 autocast


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_under_bf16_autocast(arch):
    m = build_model(arch, input_channels=6, n_meta=2, dropout=0.1).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(2, 6, 64, 64), torch.randn(2, 2))
    assert y.shape == (2,)
    assert torch.isfinite(y.float()).all()


# ---------------------------------------------------------------- forbidden guard


@pytest.mark.parametrize(
    "col",
    [
        "arc_snr", "arc_snr_int", "theta_e_arcsec", "theta_e_over_psf", "src_dmag",
        "shear", "magnification", "lens_q", "is_control", "config_id",
        "ARC_SNR", "gamma1", "label", "sample_id", "pair_id", "replicate",
        "cutout_ok", "bad_pixel_frac", "src_reff_arcsec", "shear_phi",
    ],
)
def test_forbidden_meta_refused_by_name(col):
    with pytest.raises(ValueError) as e:
        check_meta_cols(["psfsize_r", col])
    assert repr(col) in str(e.value)
    assert "forbidden" in str(e.value)


def test_allowed_meta_and_unknown_meta():
    assert check_meta_cols(["psfsize_r", "psfdepth_r"]) == ["psfsize_r", "psfdepth_r"]
    assert check_meta_cols(["PSFSIZE_Z", "psf_fwhm_used_g", "ebv", "nobs_r"]) == [
        "PSFSIZE_Z", "psf_fwhm_used_g", "ebv", "nobs_r"]
    assert check_meta_cols([]) == []
    with pytest.raises(ValueError) as e:
        check_meta_cols(["psfsize_r", "flux_r"])
    msg = str(e.value)
    assert "'flux_r'" in msg and "allowlist" in msg
    for c in ALLOWED_META_COLS:
        assert c in msg
    with pytest.raises(ValueError, match="more than once"):
        check_meta_cols(["ebv", "EBV"])
    with pytest.raises(TypeError):
        check_meta_cols("psfsize_r")


# ---------------------------------------------------------------- MetaScaler


def test_meta_scaler_round_trip():
    rng = np.random.default_rng(1)
    data = {
        "psfsize_r": rng.normal(1.3, 0.2, 100),
        "psfdepth_r": rng.normal(500.0, 80.0, 100),
        "ebv": np.full(100, 0.03),  # constant: std floored
    }
    cols = ["psfsize_r", "psfdepth_r", "ebv"]
    sc = MetaScaler.fit(data, cols)
    z = sc.transform(data)
    assert z.shape == (100, 3) and z.dtype == np.float32
    np.testing.assert_allclose(z[:, :2].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(0), 1.0, rtol=1e-5)
    assert sc.std[2] == MetaScaler.STD_FLOOR and np.all(np.abs(z[:, 2]) < 1e-3)

    state = json.loads(json.dumps(sc.state_dict()))
    sc2 = MetaScaler.from_state(state)
    assert sc2.cols == cols and sc2.n_meta == 3
    np.testing.assert_array_equal(sc2.transform(data), z)
    # a 2-D array in column order gives the same result
    arr = np.stack([data[c] for c in cols], axis=1)
    np.testing.assert_array_equal(sc2.transform(arr), z)


def test_meta_scaler_errors():
    with pytest.raises(ValueError, match="'psfdepth_r'"):
        MetaScaler.fit({"psfsize_r": [1.0, 2.0], "psfdepth_r": [1.0, np.nan]}, ["psfsize_r", "psfdepth_r"])
    sc = MetaScaler.fit({"psfsize_r": [1.0, 2.0]}, ["psfsize_r"])
    with pytest.raises(ValueError, match="'psfsize_r'"):
        sc.transform({"psfsize_r": [np.inf]})
    with pytest.raises(ValueError, match="'arc_snr'"):
        MetaScaler.fit({"arc_snr": [1.0, 2.0]}, ["arc_snr"])
    with pytest.raises(ValueError, match="'theta_e_arcsec'"):
        MetaScaler.from_state({"cols": ["theta_e_arcsec"], "mean": [0.0], "std": [1.0]})
    with pytest.raises(KeyError, match="psfdepth_r"):
        sc2 = MetaScaler.fit({"psfsize_r": [1.0], "psfdepth_r": [2.0]}, ["psfsize_r", "psfdepth_r"])
        sc2.transform({"psfsize_r": [1.0]})
