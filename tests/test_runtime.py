"""The neutral runtime helpers: devices, precisions, memory figures."""

import pytest
import torch

from agileir import runtime
from agileir.errors import ConfigError


def test_devices_and_precisions():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="auto, cpu or cuda"):
        runtime.resolve_device("tpu")
    with pytest.raises(ConfigError, match="float16 overflows"):
        runtime.check_precision("fp16")
    x = torch.randn(4, 4)
    with runtime.autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with runtime.autocast(torch.device("cpu"), "fp32"):
        assert (x @ x).dtype == torch.float32
    assert 1 <= runtime.default_threads() <= torch.get_num_threads()


def test_peak_memory_helpers() -> None:
    before = runtime.peak_rss_bytes()
    assert before > 10 * 2**20  # a Python process with torch loaded
    assert runtime.current_rss_bytes() > 0
    blob = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert runtime.peak_rss_bytes() >= before
    del blob
    if not torch.cuda.is_available():
        runtime.reset_cuda_peak()
        assert runtime.cuda_peak_bytes() == 0


def test_peak_rss_of_a_child_is_not_inherited_from_its_parent():
    """A worker started by a big process must report its own peak, not the parent's."""
    import subprocess
    import sys

    from agileir.runtime import peak_rss_bytes

    ballast = bytearray(600 * 1024 * 1024)  # make this process large
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = "from agileir.runtime import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert peak_rss_bytes() > 600 * 1024 * 1024
    assert child < 400 * 1024 * 1024
    del ballast
