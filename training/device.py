"""Which device a run trains on (`--device auto/cpu/cuda`) and in which precision (`--amp auto/bf16/fp16/off`)."""

from __future__ import annotations

import torch


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes bf16 in hardware (Ampere, compute capability 8.0, and later). Earlier GPUs emulate it
    slowly or lack kernels for it."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def select_amp(name: str, device: torch.device) -> str:
    """The forward pass's precision: "bf16", "fp16" (its loss scaled by a GradScaler) or "off" (float32).

    auto: bf16 on a GPU that has it natively, fp16 on an earlier GPU, off on the CPU. An explicit bf16 where it is
    not native, or bf16/fp16 on the CPU, is refused with one line saying what to use.
    """
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            raise SystemExit(f"--amp {name}: mixed precision is for CUDA; on the CPU use --amp off (or auto)")
        return "off"
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp16"
    if name == "bf16" and not native_bf16(device):
        raise SystemExit(
            f"--amp bf16: {torch.cuda.get_device_name(device)} has no native bf16 (compute capability 8.0+): "
            "use --amp fp16 (or auto)"
        )
    return name
