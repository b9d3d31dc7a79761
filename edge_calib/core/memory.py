"""Giving freed memory back to the system (the runtime's reload churn)."""

import ctypes
import ctypes.util
import gc


def return_freed_memory() -> None:
    """Collect cycles, then ask glibc to return the free pages of every arena to the system
    (``malloc_trim(0)``): ONNX Runtime sessions closed after a reload otherwise leave their
    memory in the allocator's free lists, and each reload thread may use another arena. A no-op
    where the C library has no malloc_trim (musl, macOS)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)
