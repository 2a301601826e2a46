"""Where and how computations run: device choice, precision, synchronisation, memory figures.

Neutral ground: every layer (models, inference, evaluation, engine, cli) may use these, and
they import nothing else of the package but its errors.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys

import torch

from agileir.errors import ConfigError

#: numeric precisions of the whole package (API, YAML configs, CLI). fp16 is not offered:
#: SwinIR-type networks overflow its range (activations beyond 65504 give inf/NaN).
PRECISIONS = ("fp32", "bf16")
#: precisions of inference (restore, upscale, test, bench): int8 is post-training dynamic
#: quantization of the linear layers (models/quantize.py); auto is :func:`fastest_precision`.
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "int8")
MiB = 2 ** 20


def resolve_device(name: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda`` (``cuda:N``); under torchrun, GPU ``local_rank``."""
    if isinstance(name, torch.device):
        return name
    name = str(name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device cuda was requested but no CUDA device is available; use --device cpu")
        if name == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device(name)
    if name != "cpu":
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """``precision`` if it is one of ``allowed`` (training's :data:`PRECISIONS` by default), else a
    one-line :class:`ConfigError`."""
    if precision not in allowed:
        hint = " (float16 overflows these networks; bf16 has its range)" if precision == "fp16" else ""
        names = ", ".join(allowed[:-1]) + " or " + allowed[-1]
        raise ConfigError(f"precision must be {names}, got {precision!r}{hint}")
    return precision


def check_inference_precision(precision: str) -> str:
    """:func:`check_precision` against :data:`INFERENCE_PRECISIONS`."""
    return check_precision(precision, INFERENCE_PRECISIONS)


def cpu_capabilities() -> dict[str, bool]:
    """The matrix and vector units of this CPU that bf16 and int8 kernels use (x86 flags)."""
    cpu = torch.cpu
    probe = lambda name: bool(getattr(cpu, name, lambda: False)())  # noqa: E731 - private torch probes
    return {"amx": probe("_is_amx_tile_supported"), "avx512_bf16": probe("_is_avx512_bf16_supported"),
            "vnni": probe("_is_vnni_supported"), "avx512": probe("_is_avx512_supported"),
            "avx2": probe("_is_avx2_supported")}


def has_fast_bf16(device: torch.device) -> bool:
    """True where bf16 matrix products run on dedicated units: CUDA, or a CPU with AMX or AVX-512 BF16."""
    if device.type == "cuda":
        return True
    caps = cpu_capabilities()
    return caps["amx"] or caps["avx512_bf16"]


def fastest_precision(device: torch.device) -> str:
    """What ``precision="auto"`` means on ``device``: bf16 where it has its units, else fp32.

    int8 is never chosen automatically: its quality cost is small (docs/performance.md) but it is
    a different model, and on the measured CPU it is slower than bf16.
    """
    return "bf16" if has_fast_bf16(device) else "fp32"


def precision_note(precision: str, device: torch.device) -> str | None:
    """One line when ``precision`` will run without its hardware on this device (it still works)."""
    if device.type != "cpu":
        return None
    caps = cpu_capabilities()
    if precision == "bf16" and not (caps["amx"] or caps["avx512_bf16"]):
        return ("agileir: note: this CPU has no bf16 matrix units (AMX or AVX-512 BF16): bf16 works but is "
                "likely slower than fp32")
    if precision == "int8" and not (caps["vnni"] or caps["amx"]):
        return "agileir: note: this CPU has no VNNI or AMX int8 units: int8 works but is likely slower than fp32"
    return None


def resolve_inference_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> :func:`fastest_precision`; int8 off the CPU is refused in one line."""
    check_inference_precision(precision)
    if precision == "auto":
        return fastest_precision(device)
    if precision == "int8" and device.type != "cpu":
        raise ConfigError("int8 inference runs on the CPU only; use --precision bf16 on a GPU")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision="bf16"``, nothing for fp32."""
    if check_precision(precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products on ``x`` run in now: the autocast dtype inside autocast on its
    device, else ``x``'s own (devices without autocast, such as "meta", included)."""
    device = x.device.type
    try:
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
    except RuntimeError:  # a device type autocast does not know
        pass
    return x.dtype


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (CUDA), so that wall-clock timings are true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_threads() -> int:
    """torch's own default thread count, capped by the CPUs this process may run on.

    Why: torch counts the machine's cores, not the ones a container or ``taskset`` leaves this
    process; more threads than those cores stall on OpenMP barriers.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores))


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` intra-op threads (None: :func:`default_threads`), then put
    the caller's count back (commands may be called in-process, from tests or scripts)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)


#: set to ``system`` to leave the C allocator as the platform configures it (:func:`keep_freed_memory`).
ALLOCATOR_ENV = "AGILEIR_ALLOCATOR"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    Why: glibc serves each block above its mmap threshold (at most 32 MiB) with fresh pages and
    unmaps them on free, so every large activation of a whole-image pass makes the kernel zero new
    pages: on the project's CPU the system time of ``agileir upscale`` was as large as its user
    time (docs/performance.md). With mmap off and trimming raised, a freed block is reused. The
    cost is a higher peak RSS (fragmentation) and memory returned only at exit, so the command
    line calls this, the library never does on its own.

    Returns whether it took effect: glibc only, and not when ``AGILEIR_ALLOCATOR=system`` or the
    user sets the same parameters through glibc's own variables (``MALLOC_MMAP_MAX_``,
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``).
    """
    if os.environ.get(ALLOCATOR_ENV, "").lower() == "system":
        return False
    own = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in own) or any(t in tunables for t in ("mmap_", "trim_threshold")):
        return False
    try:  # glibc names itself here instantly (platform.libc_ver() reads the whole interpreter binary)
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), unknown name, no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (never decreases).

    On Linux this is ``VmHWM`` of /proc/self/status, the high-water mark of this program's own
    memory. ``ru_maxrss`` is not used there: the kernel carries it over from the parent through
    fork and exec, so a worker started by a large process would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def current_rss_bytes() -> int:
    """Current resident set size in bytes (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def reset_cuda_peak(device: torch.device | int | str | None = None) -> None:
    """Synchronise and reset CUDA's allocator peak statistics (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_bytes(device: torch.device | int | str | None = None) -> int:
    """``torch.cuda.max_memory_allocated`` since the last reset, after synchronising (0 w/o CUDA)."""
    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def peak_memory_bytes(device: torch.device) -> int:
    """The figure a user feels: the CUDA allocator's peak on GPU, the process's peak RSS on CPU."""
    return cuda_peak_bytes(device) if device.type == "cuda" else peak_rss_bytes()


__all__ = ["PRECISIONS", "INFERENCE_PRECISIONS", "MiB", "resolve_device", "check_precision",
           "check_inference_precision", "compute_dtype", "cpu_capabilities", "has_fast_bf16", "fastest_precision", "precision_note",
           "resolve_inference_precision", "autocast", "synchronize", "default_threads", "torch_threads",
           "peak_rss_bytes", "current_rss_bytes", "reset_cuda_peak", "cuda_peak_bytes", "peak_memory_bytes"]
