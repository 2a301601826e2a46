"""AgileIR (attention="gswa") against the independent float64 numpy reference.

GSWA per window (SPEC §1): channels split into G = num_heads chunks; group j attends on
Z_j = X_j + Y_{j-1} (cascade), with its own projection to [q (key_dim) | k (key_dim) | v (C/G)],
optional LayerNorm before the projection, optional depthwise conv on q over the window grid,
its own relative position bias, the shift mask in SW-MSA blocks; out = proj(act(concat Y)).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import agileir
import agileir_tests_reference as R

TOL = 1e-10
# C = 12 with 3 groups (d = 4) in the first residual group and 2 groups (d = 6) in the second.
TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(3, 2), window_size=4, drop_path_rate=0.1)

CASES = {
    "dw3-relu-kd3": dict(dwconv_kernel=3, gswa_activation="relu", qkv_norm=False, key_dim=3),
    "dw3-identity-qkvnorm-kd6": dict(dwconv_kernel=3, gswa_activation="identity",
                                     qkv_norm=True, key_dim=6),
    "dw0-relu-qkvnorm-kd5": dict(dwconv_kernel=0, gswa_activation="relu", qkv_norm=True,
                                 key_dim=5),
    "dw0-identity-kd2": dict(dwconv_kernel=0, gswa_activation="identity", qkv_norm=False,
                             key_dim=2),
    "dw5-relu-kd7-noqkvbias": dict(dwconv_kernel=5, gswa_activation="relu", qkv_norm=False,
                                   key_dim=7, qkv_bias=False),
    "dw3-relu-zero-init-proj": dict(dwconv_kernel=3, gswa_activation="relu", qkv_norm=False,
                                    key_dim=4, zero_init_proj=True),
}

HEADS = {
    "pixelshuffledirect-x2": ("agileir-s", dict(scale=2)),
    "pixelshuffle-x2": ("agileir-m", dict(scale=2, num_feat=16)),
    "nearest+conv-x4-3conv": ("swinir-l", dict(attention="gswa", scale=4, num_feat=8)),
    "denoise-gray": ("agileir-m", dict(task="denoise", in_chans=1)),
    "jpeg-range255": ("agileir-m", dict(task="jpeg")),
}



@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from R.single_thread()

def _model(name, overrides, seed=0):
    torch.manual_seed(seed)
    model = agileir.build_model(name, **overrides)
    assert model.config.attention == "gswa"
    return R.perturb_parameters(model, seed=seed)


def _input(model, h, w, batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, model.config.in_chans, h, w, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gswa_options_match_reference(case):
    model = _model("agileir-s", dict(TINY, **CASES[case]))
    got, want = R.compare_with_model(model, _input(model, 11, 13))
    assert got.shape == want.shape == (2, 3, 22, 26)
    assert np.abs(got - want).max() <= TOL, f"{case}: max |diff| {np.abs(got - want).max():.3e}"
    assert np.abs(want).max() > 0.1


@pytest.mark.parametrize("case", sorted(HEADS))
def test_gswa_heads_match_reference(case):
    name, overrides = HEADS[case]
    model = _model(name, dict(TINY, key_dim=3, dwconv_kernel=3, **overrides))
    got, want = R.compare_with_model(model, _input(model, 11, 13, batch=1))
    assert np.abs(got - want).max() <= TOL, f"{case}: max |diff| {np.abs(got - want).max():.3e}"


@pytest.mark.parametrize("impl", ["auto", "recompute", "eager", "chunked", "sdpa"])
def test_gswa_implementations_match_reference(impl):
    model = _model("agileir-s", dict(TINY, key_dim=5, qkv_norm=True, attention_impl=impl))
    got, want = R.compare_with_model(model, _input(model, 9, 14, batch=1))
    assert np.abs(got - want).max() <= TOL


@pytest.mark.parametrize("kernel", ["eager", "fused"])
@pytest.mark.parametrize("chunk_kib", [5, 13], ids=["4-of-12-windows", "one-image-per-chunk"])
def test_gswa_inference_in_chunks_of_windows_matches_reference(monkeypatch, chunk_kib, kernel):
    """Inference runs the cascade over cache-sized chunks of windows: a chunk smaller than one
    image's 12 windows (the shift mask sliced per chunk) and one image per chunk, batch 2; on the
    eager kernel and on the fused one (each chunk's mask rows passed to it)."""
    from agileir.models.attention import dispatch, fused, gswa

    if kernel == "fused" and not fused.available():
        pytest.skip(f"fused kernel not built: {fused.unavailable_reason()}")
    monkeypatch.setattr(gswa, "WINDOW_CHUNK_BYTES", chunk_kib * 1024)
    monkeypatch.setattr(dispatch, "use_fused", lambda device_type: kernel == "fused")
    monkeypatch.setattr(dispatch, "cpu_prefers_sdpa", lambda: False)  # without the fused kernel: eager
    model = _model("agileir-s", dict(TINY, **CASES["dw3-relu-kd3"]))
    calls = []
    attn = model.layers[0].residual_group.blocks[1].attn  # a shifted block: the mask per chunk
    original = attn._windows
    monkeypatch.setattr(attn, "_windows", lambda x, *a: calls.append((x.shape[0], a[5])) or original(x, *a))
    got, want = R.compare_with_model(model, _input(model, 11, 13))  # 12x16 padded: 12 windows each
    assert calls == [(rows, kernel) for rows in ([4] * 6 if chunk_kib == 5 else [12, 12])]
    assert np.abs(got - want).max() <= TOL


def test_gswa_values_are_padded_to_the_aligned_width_and_sliced_back():
    """The eager path computes v at 16 columns (zeros past C/G) for the CPU's small-matrix kernels;
    the output, with gradients on and off, is the reference's."""
    from agileir.models.attention.core import VALUE_ALIGN, aligned_width

    assert (aligned_width(10), aligned_width(16), aligned_width(30), VALUE_ALIGN) == (16, 16, 32, 16)
    model = _model("agileir-s", dict(TINY, **CASES["dw3-relu-kd3"])).double().eval()
    attn = model.layers[0].residual_group.blocks[1].attn
    projections = attn.group_projections(16)
    weight, bias = projections[0]
    assert weight.shape == (2 * 3 + 16, 4) and bias.shape == (2 * 3 + 16,)
    assert weight[2 * 3 + 4:].abs().max() == 0 and bias[2 * 3 + 4:].abs().max() == 0
    x = _input(model, 11, 13)
    want = R.reference_forward(R.to_numpy_params(model.state_dict()), R.config_dict(model.config), x.numpy())
    got = model(x)  # gradients on: one chunk, the padded projection differentiable
    assert np.abs(got.detach().numpy() - want).max() <= TOL
    got.sum().backward()
    assert attn.group_qkv[0].weight.grad.shape == (2 * 3 + 4, 4)


def test_gswa_state_dict_layout():
    cfg = dict(TINY, key_dim=5, dwconv_kernel=3, qkv_norm=True)
    model = agileir.build_model("agileir-s", **cfg)
    sd = model.state_dict()
    m, c = 4, 12
    for i, groups in enumerate((3, 2)):
        d = c // groups
        for j in range(2):
            pre = f"layers.{i}.residual_group.blocks.{j}.attn."
            keys = {k[len(pre):] for k in sd if k.startswith(pre)}
            # the derived index is a buffer but not part of the state dict (it would make
            # SwinIR detectors claim GSWA weights)
            want = {"relative_position_bias_table", "proj.weight", "proj.bias"}
            for g in range(groups):
                want |= {f"group_qkv.{g}.weight", f"group_qkv.{g}.bias",
                         f"q_dwconv.{g}.weight", f"q_dwconv.{g}.bias",
                         f"qkv_norm.{g}.weight", f"qkv_norm.{g}.bias"}
            assert keys == want, (i, j, keys ^ want)
            assert sd[pre + "relative_position_bias_table"].shape == ((2 * m - 1) ** 2, groups)
            attn = model.layers[i].residual_group.blocks[j].attn
            np.testing.assert_array_equal(attn.relative_position_index.numpy(), R.relative_position_index(m))
            for g in range(groups):
                assert sd[pre + f"group_qkv.{g}.weight"].shape == (2 * 5 + d, d)
                assert sd[pre + f"group_qkv.{g}.bias"].shape == (2 * 5 + d,)
                assert sd[pre + f"q_dwconv.{g}.weight"].shape == (5, 1, 3, 3)
                assert sd[pre + f"q_dwconv.{g}.bias"].shape == (5,)
                assert sd[pre + f"qkv_norm.{g}.weight"].shape == (d,)
            assert sd[pre + "proj.weight"].shape == (c, c)

    plain = agileir.build_model("agileir-s", **dict(TINY, key_dim=5, dwconv_kernel=0,
                                                    qkv_norm=False)).state_dict()
    assert not [k for k in plain if "q_dwconv" in k or "qkv_norm" in k or ".attn.qkv." in k]


# Every GSWA ingredient must matter to the comparison.
@pytest.mark.parametrize("ablation", ["bias", "mask", "roll", "shift", "cascade", "dwconv"])
def test_reference_is_sensitive(ablation):
    model = _model("agileir-s", dict(TINY, key_dim=3, dwconv_kernel=3))
    got, want = R.compare_with_model(model, _input(model, 11, 13, batch=1), ablate=(ablation,))
    assert np.abs(got - want).max() > 1e-4


def test_reference_is_sensitive_to_activation_and_norm():
    model = _model("agileir-s", dict(TINY, key_dim=3, gswa_activation="relu", qkv_norm=True))
    model = model.double().eval()
    x = _input(model, 11, 13, batch=1)
    with torch.no_grad():
        got = model(x).numpy()
    params = R.to_numpy_params(model.state_dict())
    for change in ({"gswa_activation": "identity"}, {"qkv_norm": False}):
        cfg = dict(R.config_dict(model.config), **change)
        wrong = R.reference_forward(params, cfg, x.numpy())
        assert np.abs(got - wrong).max() > 1e-4, change
