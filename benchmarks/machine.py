"""Which machine a benchmark's figures come from, for the JSON every benchmark prints: these
machines differ (AVX-512, BF16, AMX), and a ratio measured on one says little about another."""

from __future__ import annotations

import os
import platform
import subprocess

_WANTED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "avx_vnni",
)


def cpu_flags() -> list[str]:
    """The instruction-set flags that change inference and decoding speed, from ``lscpu``."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if "Flags" in line), []
    )
    return [flag for flag in _WANTED_FLAGS if flag in flags]


def describe_machine() -> dict[str, object]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "flags": cpu_flags(),
    }
