"""`agileir info` and `agileir compare` on presets and weights files."""

from agileir import build_model, save_model
from agileir.cli import main


def test_info_prints_published_parameter_count(capsys):
    assert main(["info", "swinir-s", "--scale", "4"]) == 0
    out = capsys.readouterr().out
    assert "929,628" in out and "897,228 without bias tables" in out
    assert "for a 1280x720 output" in out


def test_info_on_weights_file(tmp_path, capsys):
    path = save_model(build_model("agileir-s", embed_dim=12, depths=(2,), num_heads=(3,), key_dim=2, scale=3),
                      tmp_path / "tiny.safetensors")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gswa" in out and "key_dim          2" in out


def test_info_scale_mismatch_for_weights_is_an_error(tmp_path, capsys):
    path = save_model(build_model("swinir-s", embed_dim=12, depths=(2,), num_heads=(3,), scale=2),
                      tmp_path / "x2.safetensors")
    assert main(["info", str(path), "--scale", "4"]) == 2
    err = capsys.readouterr().err
    assert "x2 model but scale 4" in err and "Traceback" not in err


def test_unknown_model_is_one_line(capsys):
    assert main(["info", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model" in err


def test_compare_runs(capsys):
    assert main(["compare", "swinir-s", "agileir-s", "--patch", "16", "--infer-size", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "agileir-s / swinir-s" in out
