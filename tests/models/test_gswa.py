"""GSWA is real attention: its parameters matter, all of them train, masks and cascade hold."""

import pytest
import torch

from agileir.models import GroupShiftedWindowAttention, build_model
from agileir.models.network import TransformerBlock
from agileir.models.windows import shift_mask, window_partition

M, C, G, KD = 4, 12, 3, 2


def tiny_config(**kw):
    from agileir.models import preset_config

    base = dict(embed_dim=C, depths=(2,), num_heads=(G,), window_size=M, key_dim=KD, drop_path_rate=0.0)
    base.update(kw)
    return preset_config("agileir-s", **base)


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


@pytest.fixture(params=[0, M // 2], ids=["plain", "shifted"])
def block_and_input(request):
    torch.manual_seed(0)
    block = TransformerBlock(tiny_config(), G, shift=request.param, drop_path=0.0).double()
    randomise(block)
    x = torch.randn(2, 2 * M, 2 * M, C, dtype=torch.float64)
    mask = shift_mask(2 * M, 2 * M, M, M // 2).double()
    return block, x, mask


def test_every_attention_parameter_changes_the_block_output(block_and_input):
    block, x, mask = block_and_input
    ref = block(x, mask)
    for name, p in block.attn.named_parameters():
        with torch.no_grad():
            saved = p.clone()
            p.add_(0.5 * torch.randn_like(p))
            out = block(x, mask)
            p.copy_(saved)
        assert (out - ref).abs().max() > 1e-6, f"changing attn.{name} did not change the block output"


def test_every_group_bias_and_projection_receives_gradient(block_and_input):
    block, x, mask = block_and_input
    (block(x, mask) ** 2).sum().backward()
    attn = block.attn
    table_grad = attn.relative_position_bias_table.grad
    assert table_grad is not None
    for j in range(G):
        assert table_grad[:, j].abs().sum() > 0, f"group {j} bias table got no gradient"
        for module in (attn.group_qkv[j], attn.q_dwconv[j]):
            for name, p in module.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, f"group {j} {name} got no gradient"
    assert attn.proj.weight.grad.abs().sum() > 0


def region_labels(size: int, shift: int) -> torch.Tensor:
    """For each token of the map rolled by -shift: did it wrap around (row, column)?

    Tokens that wrapped come from the opposite border of the image, so they were never
    neighbours of the others: that is what the shift mask must separate.
    """
    wrapped = (torch.arange(size) + shift >= size).long()
    return wrapped[:, None] * 2 + wrapped[None, :]


def test_shift_mask_separates_pre_shift_regions():
    torch.manual_seed(1)
    attn = GroupShiftedWindowAttention(C, M, G, key_dim=KD).double()
    randomise(attn, seed=3)
    size, shift = 3 * M, M // 2
    x = torch.randn(2, size, size, C, dtype=torch.float64)
    mask = shift_mask(size, size, M, shift).double()
    maps = attn.attention_maps(window_partition(torch.roll(x, (-shift, -shift), (1, 2)), M), mask)
    labels = window_partition(region_labels(size, shift).view(1, size, size, 1).double(), M).squeeze(-1)
    labels = labels.repeat(2, 1)  # two images
    same = (labels[:, :, None] == labels[:, None, :]).unsqueeze(1).expand_as(maps)
    assert (~same).any() and same.any()
    assert maps[~same].max() < 1e-6
    assert maps[same].min() > 0


def test_group_output_depends_only_on_earlier_groups():
    torch.manual_seed(2)
    attn = GroupShiftedWindowAttention(C, M, G, key_dim=KD).double()
    randomise(attn, seed=5)
    captured = []
    attn.act.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach().clone()))
    x = torch.randn(3, M * M, C, dtype=torch.float64)
    d = C // G
    for j in range(G - 1):
        captured.clear()
        x2 = x.clone()
        x2[..., (j + 1) * d:] += torch.randn_like(x2[..., (j + 1) * d:])
        attn(x)
        attn(x2)
        before, after = captured
        assert torch.equal(before[..., :(j + 1) * d], after[..., :(j + 1) * d]), f"groups <= {j} saw later inputs"
        assert (before[..., (j + 1) * d:] - after[..., (j + 1) * d:]).abs().max() > 1e-6
    # and the cascade is real: changing group 0's input changes every later group's output
    captured.clear()
    x3 = x.clone()
    x3[..., :d] += 1.0
    attn(x)
    attn(x3)
    for j in range(G):
        assert (captured[0][..., j * d:(j + 1) * d] - captured[1][..., j * d:(j + 1) * d]).abs().max() > 1e-6


def test_block_is_not_the_public_code_identity():
    """The public code returned the attention input; a real block differs from x + LN(x) + MLP."""
    torch.manual_seed(4)
    block = TransformerBlock(tiny_config(), G, shift=0, drop_path=0.0).double()
    randomise(block)
    x = torch.randn(1, M, M, C, dtype=torch.float64)
    y = x + block.norm1(x)
    broken = y + block.mlp(block.norm2(y))
    assert (block(x, None) - broken).abs().max() > 1e-3


@pytest.mark.parametrize("attention", ["window", "gswa"])
def test_gradcheck_tiny_network(attention):
    torch.manual_seed(0)
    model = build_model("swinir-s", attention=attention, embed_dim=8, depths=(2,), num_heads=(2,), window_size=2,
                        key_dim=2, drop_path_rate=0.0, scale=2).double()
    randomise(model, seed=7)
    x = torch.rand(1, 3, 4, 3, dtype=torch.float64, requires_grad=True)  # needs padding too
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("attention", ["window", "gswa"])
def test_gradcheck_attention_parameters(attention):
    """Gradients of the attention weights, bias table included, against finite differences."""
    from torch.func import functional_call

    torch.manual_seed(0)
    block = TransformerBlock(tiny_config(attention=attention, attention_impl="eager"), G, shift=1,
                             drop_path=0.0).double()
    randomise(block, seed=9)
    x = torch.randn(1, 2 * M, 2 * M, C, dtype=torch.float64)
    mask = shift_mask(2 * M, 2 * M, M, 1).double()
    names = [n for n, _ in block.attn.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in block.attn.named_parameters())

    def f(*ps):
        return functional_call(block, {f"attn.{n}": p for n, p in zip(names, ps)}, (x, mask)).sum(-1)

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("fused_built", [True, False])
@pytest.mark.parametrize("prefers_sdpa", [True, False])
def test_inference_kernel_follows_the_cpu_and_agrees_with_the_eager_kernel(monkeypatch, prefers_sdpa,
                                                                           fused_built) -> None:
    from agileir.models.attention import dispatch
    from agileir.models.presets import build_model

    if fused_built and not dispatch.use_fused("cpu"):
        pytest.skip("the fused kernel does not build here")
    monkeypatch.setattr(dispatch, "cpu_prefers_sdpa", lambda: prefers_sdpa)
    if not fused_built:
        monkeypatch.setattr(dispatch, "use_fused", lambda device_type: False)
    torch.manual_seed(0)
    tiny = dict(embed_dim=12, depths=(2,), num_heads=(3,), window_size=4, key_dim=2, scale=2)
    model = build_model("agileir-s", **tiny).eval()
    eager = build_model("agileir-s", **tiny, attention_impl="eager").eval()
    eager.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 12, 20)
    block = model.layers[0].residual_group.blocks[1]
    with torch.no_grad():
        # the fused kernel wherever it builds; without it the CPU decides between SDPA and eager
        assert block.plan(x).kernel == ("fused" if fused_built else "sdpa" if prefers_sdpa else "eager")
        assert block.plan(x.to("meta")).kernel == "sdpa"  # off the CPU: SDPA's fused kernels
        out, ref = model(x), eager(x)
    assert block.plan(x).kernel == "eager"  # with gradients: a kernel autograd can train
    assert (out - ref).abs().max().item() < 1e-5


def test_cpu_prefers_sdpa_only_with_amx(monkeypatch) -> None:
    """AVX-512 alone (with or without AVX-512 BF16) keeps the fused kernel: measured faster there."""
    from agileir import runtime
    from agileir.models.attention import dispatch

    for amx, avx512, expected in ((True, True, True), (False, True, False), (False, False, False)):
        caps = {"amx": amx, "avx512_bf16": avx512, "vnni": avx512, "avx512": avx512, "avx2": True}
        monkeypatch.setattr(runtime, "cpu_capabilities", lambda c=caps: c)
        dispatch.cpu_prefers_sdpa.cache_clear()
        assert dispatch.cpu_prefers_sdpa() is expected
    monkeypatch.undo()
    dispatch.cpu_prefers_sdpa.cache_clear()


def test_shift_masks_are_kept_in_the_scores_dtype() -> None:
    from agileir.models.windows import ShiftMaskCache

    cache = ShiftMaskCache(4, 2)
    cache.value = float("-inf")
    m32 = cache.get(8, 8, torch.device("cpu"))
    m16 = cache.get(8, 8, torch.device("cpu"), torch.bfloat16)
    assert m32.dtype == torch.float32 and m16.dtype == torch.bfloat16
    assert torch.equal(m16.float(), m32)  # 0 and -inf (or -100) are exact in bf16
    assert cache.get(8, 8, torch.device("cpu"), torch.bfloat16) is m16
