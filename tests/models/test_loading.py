"""Loading weights: the project's safetensors, detection from tensors, and clear errors."""

import pytest
import torch

from agileir import load_model, save_model
from agileir.errors import ModelLoadError
from agileir.models import build_model, detect_config

TINY = dict(embed_dim=8, depths=(2, 2), num_heads=(2, 2), window_size=4, key_dim=2, num_feat=8)


@pytest.mark.parametrize("opts", [dict(attention="gswa", dwconv_kernel=5, qkv_norm=True, gswa_activation="identity"),
                                  dict(attention="gswa", dwconv_kernel=0), dict(attention="window")])
def test_safetensors_roundtrip_keeps_configuration_and_outputs(tmp_path, opts):
    model = build_model("agileir-s", **TINY, **opts, scale=3).eval()
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.config == model.config
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_gswa_detected_from_tensors_alone():
    model = build_model("agileir-s", **dict(TINY, key_dim=3), dwconv_kernel=5, scale=4)
    cfg = detect_config(model.state_dict())
    assert cfg.attention == "gswa"
    assert (cfg.key_dim, cfg.dwconv_kernel, cfg.scale, cfg.depths) == (3, 5, 4, (2, 2))


def test_state_dict_keys_do_not_look_like_swinir_attention():
    keys = build_model("agileir-s").state_dict().keys()
    assert not any(k.endswith("attn.qkv.weight") for k in keys)
    assert any(k.endswith("attn.group_qkv.0.weight") for k in keys)


def test_unrelated_state_dict_is_rejected_with_a_message():
    with pytest.raises(ModelLoadError, match="conv_first.weight"):
        load_model({"encoder.weight": torch.zeros(3, 3)})


def test_wrong_shapes_are_named():
    sd = build_model("swinir-s", **TINY).state_dict()
    sd["layers.0.residual_group.blocks.0.mlp.fc2.weight"] = torch.zeros(8, 3)
    with pytest.raises(ModelLoadError, match="mlp.fc2.weight"):
        load_model(sd)


def test_garbage_files_are_rejected(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(bad)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(bad_st)
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing.pth")


def test_non_tensor_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params": {"conv_first.weight": torch.zeros(1)}, "note": object()}, path)
    with pytest.raises(ModelLoadError):
        load_model(path)
