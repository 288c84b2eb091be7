"""GPUs: the NVML adapter (``nvml.py``, the only module that imports
``pynvml``) and the allocator that places GPU instances (``allocator.py``)."""

from .allocator import GpuAllocator, Slice
from .nvml import Device, GpuProcess, MigInstance, Nvml

__all__ = ["Device", "GpuAllocator", "GpuProcess", "MigInstance", "Nvml", "Slice"]
