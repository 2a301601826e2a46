"""Independent float64 numpy reference of SwinIR / AgileIR (GSWA) inference.

Written from the papers (SwinIR arXiv 2108.10257, AgileIR arXiv 2409.06206) and SPEC.md §1,
using the official SwinIR state-dict key names. Everything is plain numpy float64 with explicit
loops (over windows, heads / groups, kernel taps), so it shares no code with the package.

Entry point: :func:`reference_forward(params, cfg, x)` where ``params`` maps state-dict keys to
float64 numpy arrays, ``cfg`` is a plain dict (see :func:`config_dict`) and ``x`` is an
(B, C, H, W) float64 array. ``ablate`` switches single ingredients off; the tests use it to show
that the comparison is sensitive to each of them.
"""

from __future__ import annotations

import math

import numpy as np

# The official SwinIR stores the DIV2K mean as a float32 tensor and casts it to the input dtype,
# so in float64 the constants are the float32-rounded values (0.4488 -> 0.448799997568...).
RGB_MEAN = tuple(float(np.float32(v)) for v in (0.4488, 0.4371, 0.4040))
LN_EPS = 1e-5
MASK_VALUE = -100.0

_erf = np.vectorize(math.erf, otypes=[np.float64])


# ----------------------------------------------------------------------------- config / weights

CONFIG_FIELDS = (
    "in_chans", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "qkv_bias",
    "patch_norm", "resi_connection", "img_range", "scale", "upsampler", "num_feat", "attention",
    "key_dim", "dwconv_kernel", "gswa_activation", "qkv_norm",
)


def config_dict(config) -> dict:
    """The fields of a NetworkConfig that the reference needs, as a plain dict."""
    return {name: getattr(config, name) for name in CONFIG_FIELDS}


def to_numpy_params(state_dict) -> dict:
    """A torch state dict as float64 numpy arrays (integer buffers stay integer)."""
    out = {}
    for key, value in state_dict.items():
        arr = value.detach().cpu().numpy()
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        out[key] = arr
    return out


# ----------------------------------------------------------------------------- primitives

def layer_norm(x, weight, bias, eps=LN_EPS):
    """LayerNorm over the last axis (biased variance, as torch)."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


def linear(x, weight, bias=None):
    """y = x W^T + b over the last axis."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y


def gelu_exact(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def leaky_relu(x, slope):
    return np.where(x >= 0, x, slope * x)


def softmax_rows(a):
    a = a - a.max(axis=-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=-1, keepdims=True)


def conv2d(x, weight, bias):
    """Cross-correlation of one image x (Cin, H, W) with weight (Cout, Cin, K, K), zero padding
    K//2, stride 1 (a 'same' convolution as torch's Conv2d(k, 1, k//2))."""
    cout, cin, kh, kw = weight.shape
    assert x.shape[0] == cin
    ph, pw = kh // 2, kw // 2
    _, h, w = x.shape
    xp = np.zeros((cin, h + 2 * ph, w + 2 * pw))
    xp[:, ph:ph + h, pw:pw + w] = x
    out = np.zeros((cout, h, w))
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, dy:dy + h, dx:dx + w]          # (Cin, H, W)
            out += np.einsum("oi,ihw->ohw", weight[:, :, dy, dx], patch)
    if bias is not None:
        out += bias[:, None, None]
    return out


def pixel_shuffle(x, r):
    """(C*r*r, H, W) -> (C, H*r, W*r) with out[c, h*r+i, w*r+j] = in[c*r*r + i*r + j, h, w]."""
    crr, h, w = x.shape
    c = crr // (r * r)
    out = np.zeros((c, h * r, w * r))
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                out[ch, i::r, j::r] = x[ch * r * r + i * r + j]
    return out


def nearest_up2(x):
    """Nearest-neighbour x2 upsampling of (C, H, W)."""
    return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)


def reflect_pad_bottom_right(x, ph, pw):
    """Reflection padding (edge not repeated) of (C, H, W) at the bottom and the right."""
    _, h, w = x.shape

    def idx(n, p):
        base = list(range(n))
        for t in range(n, n + p):
            base.append(2 * (n - 1) - t)
        return np.array(base)

    return x[:, idx(h, ph)][:, :, idx(w, pw)]


# ----------------------------------------------------------------------------- window helpers

def relative_position_bias(table, m):
    """(heads, N, N) bias: for query i and key j in an m x m window (row-major tokens),
    table[(dy + m - 1) * (2m - 1) + (dx + m - 1)] with dy = row_i - row_j, dx = col_i - col_j."""
    n = m * m
    heads = table.shape[1]
    bias = np.zeros((heads, n, n))
    for i in range(n):
        ri, ci = divmod(i, m)
        for j in range(n):
            rj, cj = divmod(j, m)
            bias[:, i, j] = table[(ri - rj + m - 1) * (2 * m - 1) + (ci - cj + m - 1)]
    return bias


def relative_position_index(m):
    n = m * m
    index = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        ri, ci = divmod(i, m)
        for j in range(n):
            rj, cj = divmod(j, m)
            index[i, j] = (ri - rj + m - 1) * (2 * m - 1) + (ci - cj + m - 1)
    return index


def region_labels(hp, wp, m, s):
    """Pre-shift region id of each position of the (rolled) hp x wp map: rows (and columns) are
    split by [0, hp-m), [hp-m, hp-s), [hp-s, hp)."""
    def band(p, n):
        if p < n - m:
            return 0
        if p < n - s:
            return 1
        return 2
    labels = np.zeros((hp, wp), dtype=np.int64)
    for r in range(hp):
        for c in range(wp):
            labels[r, c] = band(r, hp) * 3 + band(c, wp)
    return labels


def shift_masks(hp, wp, m, s):
    """(nW, N, N) masks (0 / -100), windows in row-major window order."""
    labels = region_labels(hp, wp, m, s)
    masks = []
    for wy in range(hp // m):
        for wx in range(wp // m):
            lab = labels[wy * m:(wy + 1) * m, wx * m:(wx + 1) * m].reshape(-1)
            masks.append(np.where(lab[:, None] != lab[None, :], MASK_VALUE, 0.0))
    return np.stack(masks)


# ----------------------------------------------------------------------------- attention

def swin_window_attention(t, p, prefix, heads, bias, mask, ablate=()):
    """Multi-head self-attention of one window t (N, C)."""
    n, c = t.shape
    dh = c // heads
    qkv = linear(t, p[prefix + "qkv.weight"], p.get(prefix + "qkv.bias"))
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    out = np.zeros((n, c))
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        logits = (q[:, sl] @ k[:, sl].T) / math.sqrt(dh)
        if "bias" not in ablate:
            logits = logits + bias[h]
        if mask is not None and "mask" not in ablate:
            logits = logits + mask
        out[:, sl] = softmax_rows(logits) @ v[:, sl]
    return linear(out, p[prefix + "proj.weight"], p[prefix + "proj.bias"])


def depthwise_conv_window(q, weight, bias, m):
    """Depthwise conv of q (N, kd) over the m x m token grid, zero padding K//2."""
    kd = q.shape[1]
    grid = q.reshape(m, m, kd)
    ksz = weight.shape[-1]
    pad = ksz // 2
    gp = np.zeros((m + 2 * pad, m + 2 * pad, kd))
    gp[pad:pad + m, pad:pad + m] = grid
    out = np.zeros((m, m, kd))
    for dy in range(ksz):
        for dx in range(ksz):
            # out[r, c, ch] += w[ch, dy, dx] * q[r + dy - pad, c + dx - pad, ch]
            out += weight[:, 0, dy, dx] * gp[dy:dy + m, dx:dx + m, :]
    if bias is not None:
        out += bias
    return out.reshape(m * m, kd)


def gswa_window_attention(t, p, prefix, groups, bias, mask, cfg, m, ablate=()):
    """Group shifted window attention (SPEC §1) of one window t (N, C): cascaded groups."""
    n, c = t.shape
    d = c // groups
    kd = cfg["key_dim"]
    y_prev = np.zeros((n, d))
    ys = []
    for g in range(groups):
        z = t[:, g * d:(g + 1) * d]
        if "cascade" not in ablate:
            z = z + y_prev
        if cfg["qkv_norm"]:
            z = layer_norm(z, p[f"{prefix}qkv_norm.{g}.weight"], p[f"{prefix}qkv_norm.{g}.bias"])
        qkv = linear(z, p[f"{prefix}group_qkv.{g}.weight"], p.get(f"{prefix}group_qkv.{g}.bias"))
        assert qkv.shape[1] == 2 * kd + d
        q, k, v = qkv[:, :kd], qkv[:, kd:2 * kd], qkv[:, 2 * kd:]
        if cfg["dwconv_kernel"] and "dwconv" not in ablate:
            q = depthwise_conv_window(q, p[f"{prefix}q_dwconv.{g}.weight"],
                                      p.get(f"{prefix}q_dwconv.{g}.bias"), m)
        logits = (q @ k.T) / math.sqrt(kd)
        if "bias" not in ablate:
            logits = logits + bias[g]
        if mask is not None and "mask" not in ablate:
            logits = logits + mask
        y = softmax_rows(logits) @ v
        ys.append(y)
        y_prev = y
    cat = np.concatenate(ys, axis=1)
    if cfg["gswa_activation"] == "relu":
        cat = np.maximum(cat, 0.0)
    else:
        assert cfg["gswa_activation"] == "identity"
    return linear(cat, p[prefix + "proj.weight"], p[prefix + "proj.bias"])


# ----------------------------------------------------------------------------- body

def transformer_block(x, p, prefix, cfg, heads, shift, ablate=()):
    """One (S)W-MSA block on the token map x (Hp, Wp, C)."""
    hp, wp, c = x.shape
    m = cfg["window_size"]
    table = p[prefix + "attn.relative_position_bias_table"]
    assert table.shape == ((2 * m - 1) ** 2, heads)
    bias = relative_position_bias(table, m)
    masks = shift_masks(hp, wp, m, shift) if shift else None

    y = layer_norm(x, p[prefix + "norm1.weight"], p[prefix + "norm1.bias"])
    if shift and "roll" not in ablate:
        y = np.roll(y, (-shift, -shift), axis=(0, 1))
    z = np.zeros_like(y)
    widx = 0
    for wy in range(hp // m):
        for wx in range(wp // m):
            tokens = y[wy * m:(wy + 1) * m, wx * m:(wx + 1) * m].reshape(m * m, c)
            mask = masks[widx] if masks is not None else None
            if cfg["attention"] == "gswa":
                out = gswa_window_attention(tokens, p, prefix + "attn.", heads, bias, mask, cfg, m,
                                            ablate)
            else:
                out = swin_window_attention(tokens, p, prefix + "attn.", heads, bias, mask, ablate)
            z[wy * m:(wy + 1) * m, wx * m:(wx + 1) * m] = out.reshape(m, m, c)
            widx += 1
    if shift and "roll" not in ablate:
        z = np.roll(z, (shift, shift), axis=(0, 1))
    x = x + z
    h = layer_norm(x, p[prefix + "norm2.weight"], p[prefix + "norm2.bias"])
    h = linear(h, p[prefix + "mlp.fc1.weight"], p[prefix + "mlp.fc1.bias"])
    h = gelu_exact(h)
    h = linear(h, p[prefix + "mlp.fc2.weight"], p[prefix + "mlp.fc2.bias"])
    return x + h


def residual_conv(fmap, p, prefix, kind):
    """The conv at the end of a residual group / after the body, on (C, H, W)."""
    if kind == "1conv":
        return conv2d(fmap, p[prefix + ".weight"], p[prefix + ".bias"])
    assert kind == "3conv"
    h = leaky_relu(conv2d(fmap, p[prefix + ".0.weight"], p[prefix + ".0.bias"]), 0.2)
    h = leaky_relu(conv2d(h, p[prefix + ".2.weight"], p[prefix + ".2.bias"]), 0.2)
    return conv2d(h, p[prefix + ".4.weight"], p[prefix + ".4.bias"])


def deep_features(shallow, p, cfg, ablate=()):
    """shallow (C, Hp, Wp) -> normalised deep features (C, Hp, Wp) (before conv_after_body)."""
    m = cfg["window_size"]
    x = np.transpose(shallow, (1, 2, 0)).copy()        # (Hp, Wp, C) tokens
    if cfg["patch_norm"]:
        x = layer_norm(x, p["patch_embed.norm.weight"], p["patch_embed.norm.bias"])
    for i, depth in enumerate(cfg["depths"]):
        heads = cfg["num_heads"][i]
        group_in = x
        for j in range(depth):
            shift = (m // 2) if (j % 2 == 1 and "shift" not in ablate) else 0
            x = transformer_block(x, p, f"layers.{i}.residual_group.blocks.{j}.", cfg, heads,
                                  shift, ablate)
        fmap = np.transpose(x, (2, 0, 1))
        fmap = residual_conv(fmap, p, f"layers.{i}.conv", cfg["resi_connection"])
        x = np.transpose(fmap, (1, 2, 0)) + group_in
    x = layer_norm(x, p["norm.weight"], p["norm.bias"])
    return np.transpose(x, (2, 0, 1))


def head(feat, x_norm, p, cfg):
    """Reconstruction from body output feat (C, Hp, Wp); x_norm is the normalised input."""
    up = cfg["upsampler"]
    s = cfg["scale"]
    if up == "pixelshuffle":
        h = leaky_relu(conv2d(feat, p["conv_before_upsample.0.weight"],
                              p["conv_before_upsample.0.bias"]), 0.01)
        idx = 0
        if s & (s - 1) == 0:
            for _ in range(int(round(math.log2(s)))):
                h = pixel_shuffle(conv2d(h, p[f"upsample.{idx}.weight"], p[f"upsample.{idx}.bias"]), 2)
                idx += 2
        else:
            assert s == 3
            h = pixel_shuffle(conv2d(h, p["upsample.0.weight"], p["upsample.0.bias"]), 3)
        return conv2d(h, p["conv_last.weight"], p["conv_last.bias"])
    if up == "pixelshuffledirect":
        return pixel_shuffle(conv2d(feat, p["upsample.0.weight"], p["upsample.0.bias"]), s)
    if up == "nearest+conv":
        h = leaky_relu(conv2d(feat, p["conv_before_upsample.0.weight"],
                              p["conv_before_upsample.0.bias"]), 0.01)
        h = leaky_relu(conv2d(nearest_up2(h), p["conv_up1.weight"], p["conv_up1.bias"]), 0.2)
        if s == 4:
            h = leaky_relu(conv2d(nearest_up2(h), p["conv_up2.weight"], p["conv_up2.bias"]), 0.2)
        else:
            assert s == 2
        h = leaky_relu(conv2d(h, p["conv_hr.weight"], p["conv_hr.bias"]), 0.2)
        return conv2d(h, p["conv_last.weight"], p["conv_last.bias"])
    assert up == "none"
    return x_norm + conv2d(feat, p["conv_last.weight"], p["conv_last.bias"])


def reference_forward(p, cfg, x, ablate=()):
    """Full network on x (B, C, H, W) float64 in [0, 1]; returns (B, C, s*H, s*W)."""
    x = np.asarray(x, dtype=np.float64)
    b, cin, h, w = x.shape
    m = cfg["window_size"]
    s = cfg["scale"] if cfg["upsampler"] != "none" else 1
    rng = float(cfg["img_range"])
    mean = np.array(RGB_MEAN if cin == 3 else (0.0,) * cin)[:, None, None]
    ph, pw = (-h) % m, (-w) % m
    outs = []
    for n in range(b):
        img = reflect_pad_bottom_right(x[n], ph, pw)
        xn = (img - mean) * rng
        shallow = conv2d(xn, p["conv_first.weight"], p["conv_first.bias"])
        feat = deep_features(shallow, p, cfg, ablate)
        feat = residual_conv(feat, p, "conv_after_body", cfg["resi_connection"]) + shallow
        out = head(feat, xn, p, cfg)
        out = out / rng + mean
        outs.append(out[:, :s * h, :s * w])
    return np.stack(outs)


# ----------------------------------------------------------------------------- torch glue (tests)

def perturb_parameters(model, seed=0, std=0.1, table_std=0.5):
    """Add Gaussian noise to every parameter (in place) so that zero-initialised biases, unit
    LayerNorm weights or zero bias tables cannot hide a wrong formula."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = table_std if name.endswith("relative_position_bias_table") else std
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
            param.add_(noise * scale)
    return model


def single_thread():
    """Generator for a pytest fixture: run with one torch thread, restore afterwards (tiny
    workloads; avoids thread oversubscription when the machine is shared)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def compare_with_model(model, x, ablate=()):
    """(model output, reference output) as float64 numpy for a float64 model in eval mode."""
    import torch

    model = model.double().eval()
    xt = torch.as_tensor(x, dtype=torch.float64)
    with torch.no_grad():
        got = model(xt).numpy()
    want = reference_forward(to_numpy_params(model.state_dict()), config_dict(model.config),
                             xt.numpy(), ablate=ablate)
    return got, want
