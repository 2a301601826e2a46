"""Shared, generic test fixtures: where the benchmark images are, and hostile files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared benchmark folder sits next to the repository: <repo>/../shared/data/benchmarks
SHARED_BENCHMARKS = (REPO_ROOT / ".." / "shared" / "data" / "benchmarks").resolve()
# The project's own small copy (Set5 HR, LR_bicubic X2/X4, LR_bicubic_edsr X4)
ASSET_TESTDATA = REPO_ROOT / "src" / "agileir" / "assets" / "testdata"

try:  # run from a checkout without installing
    import agileir  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(REPO_ROOT / "src"))


def shared_benchmarks_available() -> bool:
    """True when ../shared/data/benchmarks holds the Set5/Set14/B100 folders."""
    return all((SHARED_BENCHMARKS / name / "HR").is_dir() for name in ("Set5", "Set14", "B100"))


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """The shared benchmark folder (Set5, Set14, B100); skips the test when it is absent."""
    if not shared_benchmarks_available():
        pytest.skip(f"shared benchmark folder not found at {SHARED_BENCHMARKS}")
    return SHARED_BENCHMARKS


@pytest.fixture(scope="session")
def testdata_dir() -> Path:
    """The project's own small benchmark copy (src/agileir/assets/testdata)."""
    return ASSET_TESTDATA


@pytest.fixture(scope="session")
def any_benchmarks_dir() -> Path:
    """The shared benchmark folder when present, else the project's own copy."""
    return SHARED_BENCHMARKS if shared_benchmarks_available() else ASSET_TESTDATA


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny workloads, no oversubscription on a shared
    machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture()
def bomb_png():
    """Make a tiny PNG whose header claims ``width x height`` (a decompression bomb before
    decoding): a real 1x1 file with its IHDR size and CRC rewritten."""
    import struct
    import zlib

    from PIL import Image

    def make(path: Path, width: int = 20000, height: int = 20000) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (1, 1)).save(path)
        data = bytearray(path.read_bytes())
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        path.write_bytes(bytes(data))
        return path

    return make
