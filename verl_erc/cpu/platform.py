"""verl platform ``cpu``: runs verl's workers on CPU with gloo, registered in verl's PlatformRegistry.

Selected explicitly only (``VERL_PLATFORM=cpu``, which :func:`verl_erc.run.preflight.preflight`
sets when ``trainer.device=cpu``); auto-detection never picks it. Ray has no notion of it, so
the platform names Ray's ``GPU`` resource: verl's resource pools count only GPU/NPU resources,
and the CPU config gives Ray that many *logical* GPUs (``ray_kwargs.ray_init.num_gpus``), one per
training process.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import ModuleType
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "cpu"


class CpuSelectedOnGpuMachineError(RuntimeError):
    """The CPU platform was selected on a machine where CUDA is visible."""


def check_no_visible_gpu() -> None:
    """Refuse the CPU platform where torch sees a CUDA device (runs there belong on the GPU path)."""
    if torch.cuda.is_available():
        raise CpuSelectedOnGpuMachineError(
            f"verl_erc: the CPU backend was selected (VERL_PLATFORM=cpu / trainer.device=cpu) but torch sees "
            f"{torch.cuda.device_count()} CUDA device(s). The CPU backend is for machines without a GPU: on this "
            "machine use a GPU config (trainer.device=cuda, e.g. the erc_trainer config)."
        )


class _CpuDeviceModule:
    """``get_torch_device()`` on the CPU: ``torch.cpu`` plus the memory and RNG calls verl makes on a device module.

    Memory figures are this process's resident memory (peak: ``ru_maxrss``); there is no cache to empty.
    """

    def __getattr__(self, name: str):
        return getattr(torch.cpu, name)

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def get_device_name(device=None) -> str:
        return "CPU"

    @staticmethod
    def set_rng_state(state, device=None) -> None:
        torch.set_rng_state(state)  # verl restores rng_state[device_name], i.e. the "cpu" state, here

    @staticmethod
    def memory_allocated(device=None) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    memory_reserved = memory_allocated

    @staticmethod
    def max_memory_allocated(device=None) -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    max_memory_reserved = max_memory_allocated

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        import psutil

        vm = psutil.virtual_memory()
        return vm.available, vm.total


CPU_DEVICE_MODULE = _CpuDeviceModule()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """CPU-only training and rollout: device ``cpu``, collectives over gloo."""

    def __init__(self) -> None:
        check_no_visible_gpu()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        return False  # never auto-detected: select it with VERL_PLATFORM=cpu

    def current_device(self) -> str:
        return "cpu"  # verl passes this to .to(...); an int would mean cuda:N

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for the logical GPUs; nothing reads it on CPU

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # logical GPUs: verl's pools count GPU/NPU only (see the module docstring)

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
