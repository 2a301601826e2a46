"""The README's commands and Python blocks, run as written, so the README cannot drift.

Every ```bash line (each part of an ``&&`` chain) and every ```python block is either run here,
in a temporary folder holding a copy of the shipped assets, or listed in ``SKIP_COMMANDS`` /
``SKIP_PYTHON`` with the reason it cannot be (a GPU, a file of the user's, minutes of training,
an install). A README command that is neither run successfully nor listed fails the suite, and
so does a listed command the README no longer has. Placeholders the README uses for the user's
files (``photo.jpg``, ``photos/``, ...) are made from shipped images by ``PLACEHOLDER_FILES``;
the one placeholder variable (``array_uint16``) is defined by ``PLACEHOLDER_VARIABLES``.
Torch runs on one thread (``OMP_NUM_THREADS=1``); the whole file takes about a minute.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

import agileir

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ASSETS = Path(agileir.__file__).resolve().parent / "assets"
LR_X4 = ASSETS / "testdata" / "Set5" / "LR_bicubic" / "X4"
TIMEOUT_S = 120  # per command; each takes a few seconds

NEEDS_GPU = "needs a CUDA GPU"
INSTALLS = "installs packages; CI installs the project (and its test extra) before the tests run"
TRAINS = "trains for minutes to hours (tests/engine covers training on tiny configurations)"
BENCH = ("runs training steps for minutes and up to ~12 GB of RAM; tests/engine/test_benchmark.py and "
         "tests/cli run it on tiny sizes")

# Exact command text (comment stripped) -> why it is not run here.
SKIP_COMMANDS: dict[str, str] = {
    "pip install torch==2.13.0 .": INSTALLS,
    "pip install torch==2.13.0 -e '.[test]'": INSTALLS,
    "python -m pytest -q": "the test suite itself, which this test is part of",
    "agileir upscale photo.png --model 001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth":
        "needs the official SwinIR-M checkpoint, a file the user downloads (not shipped)",
    "agileir restore noisy/ -o clean/ --model my_denoiser.safetensors":
        "needs a denoising model of the user's: none is shipped (tests/cli/test_upscale.py runs restore on a tiny one)",
    "agileir compare": "about a minute on two cores; test_compare_sample_figures_are_real runs it with a tiny "
                       "inference size and checks the README's sample figures",
    "agileir test --model weights.safetensors --data path/to/Set14 --scale 4 --json scores.json":
        "the user's weights and data",
    "agileir test --model weights.pth --data path/to/B100 --scale 4 --tile 128 --self-ensemble":
        "the user's weights and data",
    "agileir test --model weights.safetensors --data path/to/HR_only_folder --noise 25": "the user's weights and data",
    "agileir test --model agileir-s_jpeg --data path/to/LIVE1 --jpeg 10": "LIVE1 is not shipped (docs/tasks.md: layouts)",
    "agileir bench": BENCH,
    "bash scripts/train_gpu.sh /data/DIV2K": NEEDS_GPU + " and DIV2K (tests/engine/test_div2k_pipeline.py runs it on a "
                                             "CPU with a tiny model on a synthetic DIV2K folder)",
    "NGPU=8 bash scripts/train_gpu.sh /data/DIV2K": NEEDS_GPU,
    "python scripts/study.py": TRAINS,
    "agileir bench --batch 16 --grad-checkpoint": BENCH,
    "agileir bench swinir-s:recompute agileir-s --precision bf16 --out bench/": BENCH,
    "agileir bench --device cuda --batch 16 64": NEEDS_GPU,
    "agileir bench swinir-s swinir-s:sdpa@bf16 agileir-s agileir-s@bf16 agileir-s@int8 --no-train --infer-size 256 "
    "640x360": "minutes of inference on large inputs; tests/engine/test_benchmark.py runs --no-train on tiny sizes",
    "pip install '.[onnx]'": INSTALLS,
    "agileir export weights.pth --onnx swinir.onnx --dynamic --opset 17":
        "an official SwinIR checkpoint of the user's; the same exporter runs above on shipped weights",
    "pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu":
        INSTALLS + "; PyTorch's own index is not reachable from CI",
    "pip install '.[spandrel]'": INSTALLS,
    "agileir train --config configs/quickstart.yaml": TRAINS + "; about 10 minutes on two cores",
    "agileir train --config configs/agileir-s_x2.yaml": TRAINS + "; needs DIV2K",
    "agileir train --config configs/agileir-s_x2.yaml train.iterations=200 data.batch_size=16": TRAINS + "; needs DIV2K",
    "agileir train --config configs/agileir-s_x2.yaml --resume": TRAINS + "; needs DIV2K and a run to resume",
    "torchrun --nproc_per_node 8 -m agileir train --config configs/agileir-s_x2.yaml": NEEDS_GPU + " (8 of them)",
    "agileir train --config configs/release/agileir-s_x2.yaml": TRAINS + "; needs ../shared/data",
    "agileir train --config configs/release/agileir-s-real_x4.yaml": TRAINS + "; needs ../shared/data",
}

# A distinctive line of a Python block -> why it is not run here (or, for a callable, when).
SKIP_PYTHON: dict[str, str] = {
    'model = agileir.load_model("001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth")':
        "needs the official SwinIR-M checkpoint, a file the user downloads (not shipped)",
}
# Python blocks that run only where their optional dependency imports.
NEEDS_MODULE = {"import spandrel": "spandrel"}


def _photo(path: Path) -> None:
    Image.open(LR_X4 / "headx4.png").convert("RGB").save(path)


def _photos(path: Path) -> None:
    path.mkdir()
    for name in ("birdx4.png", "headx4.png"):
        shutil.copy(LR_X4 / name, path / name)


def _scan(path: Path) -> None:
    Image.open(LR_X4 / "birdx4.png").convert("RGB").crop((0, 0, 40, 40)).save(path)


def _official_pth(path: Path) -> None:
    """An official-layout SwinIR checkpoint (``params`` + shift masks), from the shipped SwinIR-S."""
    import torch

    from agileir.models.loading import official_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    model = agileir.load_model(ASSETS / "weights" / "swinir-s_x4.safetensors")
    torch.save({"params": official_state_dict(model)}, path)


# README placeholder -> how the test makes it (in the temporary folder the commands run in).
PLACEHOLDER_FILES: dict[str, Callable[[Path], None]] = {
    "photo.jpg": _photo,  # a shipped Set5 LR image (70x70) stands for the user's photo
    "photo.png": _photo,
    "photos": _photos,
    "scan.tif": _scan,
    "path/to/weights.pth": _official_pth,
}
PLACEHOLDER_VARIABLES = {
    "array_uint16": "import numpy as _np\n"
                    "array_uint16 = (_np.arange(24 * 20 * 3).reshape(24, 20, 3) * 91 % 65536).astype(_np.uint16)\n",
}

# Outputs the README promises for a command: path -> (width, height) or None (exists).
EXPECTED_OUTPUTS = {
    "agileir upscale src/agileir/assets/testdata/Set5/LR_bicubic/X2/butterflyx2.png -o out/":
        {"out/butterflyx2_x2.png": (256, 256)},
    "agileir upscale photo.jpg": {"photo_x2.jpg": (140, 140)},
    "agileir upscale photo.jpg --model agileir-s-real --scale 4": {"photo_x4.jpg": (280, 280)},
    "agileir upscale photos/ -o big/ --scale 4": {"big/birdx4_x4.png": None, "big/headx4_x4.png": None},
    "agileir upscale photo.png -o photo_big.png --model swinir-s_x4 --threads 1": {"photo_big.png": (280, 280)},
    "agileir upscale photo.png -o web/ --format jpg --jpeg-quality 85": {"web/photo_x2.jpg": (140, 140)},
    "agileir upscale scan.tif --tile 256 --precision bf16 --self-ensemble": {"scan_x2.tif": (80, 80)},
    "agileir export agileir-s_x4 --onnx agileir-s_x4.onnx --dynamic": {"agileir-s_x4.onnx": None},
    "agileir export agileir-s_x4 --torchscript agileir-s_x4.pt": {"agileir-s_x4.pt": None},
    "agileir export agileir-s_x2 --int8 --onnx agileir-s_x2-int8.onnx --dynamic --safetensors "
    "agileir-s_x2-int8.safetensors": {"agileir-s_x2-int8.onnx": None, "agileir-s_x2-int8.safetensors": None},
    "agileir upscale photo.png -o fast/ --precision auto": {"fast/photo_x2.png": (140, 140)},
    "agileir upscale photo.png -o small/ --precision int8": {"small/photo_x2.png": (140, 140)},
}


def _fenced(lang: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", README.read_text(), re.M | re.S)
            if m.group(1) == lang]


def readme_commands() -> list[str]:
    """Every shell command of the README's bash blocks: one per line and per ``&&`` part."""
    commands = []
    for block in _fenced("bash"):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in line.split("&&"))
    return commands


def readme_python_blocks() -> list[str]:
    return _fenced("python")


def _block_id(block: str) -> str:
    return next(line for line in block.splitlines() if line.strip() and not line.startswith(("import", "from")))[:50]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    src = str(Path(agileir.__file__).resolve().parents[1])  # the agileir this test imports, in the subprocess too
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder laid out like the repository root for what the README uses: the shipped assets
    (copied, so nothing a command writes can land in the checkout) and the placeholder files."""
    root = tmp_path_factory.mktemp("readme")
    for sub in ("testdata", "weights", "train"):
        shutil.copytree(ASSETS / sub, root / "src" / "agileir" / "assets" / sub)
    for name, make in PLACEHOLDER_FILES.items():
        make(root / name)
    return root


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "agileir":
        return [sys.executable, "-m", "agileir", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    raise AssertionError(f"the test does not know how to run {argv[0]!r}: run it or list it in SKIP_COMMANDS")


def test_every_readme_command_is_run_or_listed_with_a_reason():
    commands = readme_commands()
    assert len(commands) > 20, "README parsing found too few commands"
    stale = sorted(set(SKIP_COMMANDS) - set(commands))
    assert not stale, f"SKIP_COMMANDS lists commands the README no longer has: {stale}"
    blocks = readme_python_blocks()
    stale = [key for key in SKIP_PYTHON if not any(key in block for block in blocks)]
    assert not stale, f"SKIP_PYTHON lists blocks the README no longer has: {stale}"
    unmatched = sorted(set(EXPECTED_OUTPUTS) - set(commands))
    assert not unmatched, f"EXPECTED_OUTPUTS names commands the README no longer has: {unmatched}"


RUN = [c for c in dict.fromkeys(readme_commands()) if c not in SKIP_COMMANDS]


@pytest.mark.parametrize("command", RUN)
def test_readme_command_runs(workspace, command):
    proc = subprocess.run(_argv(command), cwd=workspace, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    for rel, size in EXPECTED_OUTPUTS.get(command, {}).items():
        path = workspace / rel
        assert path.is_file(), f"{command} did not write {rel}"
        if size is not None:
            assert Image.open(path).size == size, rel


@pytest.mark.parametrize("block", readme_python_blocks(), ids=_block_id)
def test_readme_python_block_runs(workspace, block):
    for key, reason in SKIP_PYTHON.items():
        if key in block:
            pytest.skip(reason)
    for key, module in NEEDS_MODULE.items():
        if key in block:
            probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, env=_env())
            if probe.returncode:
                pytest.skip(f"{module} does not import here (it needs a torchvision matching torch; "
                            f"tests/integrations/test_spandrel.py covers the integration with a stand-in)")
    prelude = "".join(code for name, code in PLACEHOLDER_VARIABLES.items() if re.search(rf"\b{name}\b", block))
    proc = subprocess.run([sys.executable, "-c", prelude + block], cwd=workspace, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{block}\n{proc.stderr[-2000:]}"


def _sample_after(marker: str) -> list[str]:
    """The lines of the first plain ``` block after ``marker`` in the README."""
    text = README.read_text()
    start = text.index(marker)
    match = re.compile(r"^```\n(.*?)^```", re.M | re.S).search(text, start)
    assert match, f"no sample output after {marker!r}"
    return [line.rstrip() for line in match.group(1).splitlines()]


def test_models_sample_output_is_the_real_one(capsys):
    from agileir.cli import main

    assert main(["models"]) == 0
    real = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    sample = _sample_after("`agileir models` prints:")
    assert real[:len(sample)] == sample


def test_compare_sample_figures_are_real(capsys):
    """The deterministic columns (parameters, MACs, activation census) and their ratios; times
    vary with the machine, so the run uses a tiny inference input."""
    import torch

    from agileir.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["compare", "--infer-size", "8", "--repeats", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    real = capsys.readouterr().out.splitlines()
    sample = _sample_after("two CPU cores; the times vary with the machine")

    def figures(lines: list[str]) -> dict[str, list[str]]:
        rows = {}
        for line in lines:
            cells = line.split()
            if len(cells) > 4 and cells[1] in ("window", "gswa"):
                rows[cells[0]] = cells[1:5]  # attention, params, GMACs, activation MiB
            if "/ swinir-s:" in line:
                rows["ratios"] = re.findall(r"(params|MACs|activation memory) ([\d.]+)x", line)
        return rows

    assert figures(real) == figures(sample) and len(figures(sample)) == 3
