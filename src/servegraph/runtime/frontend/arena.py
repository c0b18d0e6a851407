"""One worker's shared memory: fixed slots that carry a request's tensors and its answer's.

The mapping is an anonymous ``memfd`` handed to the worker as a file descriptor, so it has
no name in ``/dev/shm`` and the kernel frees it when the last process holding it goes: a
killed server cannot leak it. Each slot has an input half (the worker writes, the model
process reads views of it as the request's arrays) and an output half (the other way
round); the worker owns the slot from the request until its answer's arrays are dropped.
A tensor that does not fit, or has no fixed-size dtype (BYTES), travels inline in the
descriptor instead: slower, never wrong. A small one (up to ``SMALL_TENSOR`` bytes) travels
inline as its raw bytes: copying a few KiB through the socket costs less than a slot's
bookkeeping on both sides (a view, a finalizer).
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections import deque
from typing import NamedTuple

import numpy as np

ALIGN = 64
_FIXED_SIZE_KINDS = frozenset("biufc")
SMALL_TENSOR = 16 << 10
"""Bytes up to which a fixed-size tensor travels as raw bytes in the descriptor, not in a slot.
A [1, 512] FP32 request and its [1, 16] answer, put, pickled, unpickled and read on both
sides (timeit): 19-27 µs this way against 48-62 through a slot."""


class TensorRef(NamedTuple):
    """Where one tensor lies in the mapping (a tuple: it pickles as cheaply as one)."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


class RawTensor(NamedTuple):
    """A small tensor's bytes, carried in the descriptor itself."""

    data: bytes
    dtype: str
    shape: tuple[int, ...]


Carried = dict[str, "TensorRef | RawTensor | np.ndarray"]
"""Tensors by name as a descriptor carries them: in shared memory, as raw bytes, or inline."""


class SlotArena:
    def __init__(self, fd: int, slots: int, slot_bytes: int) -> None:
        self.fd = fd
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._map = mmap.mmap(fd, slots * 2 * slot_bytes)
        self._free: deque[int] = deque(range(slots))

    @classmethod
    def create(cls, name: str, slots: int, slot_bytes: int) -> SlotArena:
        """A fresh anonymous mapping (close-on-exec; pass its ``fd`` to the worker)."""
        fd = os.memfd_create(name)
        try:
            os.ftruncate(fd, slots * 2 * slot_bytes)
            return cls(fd, slots, slot_bytes)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # arrays still view it: the mapping goes with them
            pass
        os.close(self.fd)

    # ------------------------------------------------------------ slot ownership (worker)
    def acquire(self) -> int | None:
        """A free slot, or None when every slot is in flight (the caller sends inline)."""
        # Last in, first out: the slots in use stay the few already touched, so the mapping's
        # resident memory follows peak concurrency, not the whole arena.
        return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    # --------------------------------------------------------------------- tensors
    def _half(self, slot: int, output: bool) -> int:
        return (2 * slot + int(output)) * self.slot_bytes

    def put(self, slot: int | None, output: bool, arrays: dict[str, np.ndarray]) -> Carried:
        """Small tensors as raw bytes; the others copied into the slot's half where they fit,
        inline where they do not (or have no fixed size, or there is no slot)."""
        carried: Carried = {}
        start = self._half(slot, output) if slot is not None else 0
        end = start + self.slot_bytes if slot is not None else 0
        offset = start
        for name, array in arrays.items():
            fixed = array.dtype.kind in _FIXED_SIZE_KINDS
            if fixed and array.nbytes <= SMALL_TENSOR:
                carried[name] = RawTensor(array.tobytes(), array.dtype.str, array.shape)
            elif not fixed or slot is None or offset + array.nbytes > end:
                carried[name] = array
            else:
                target: np.ndarray = np.ndarray(array.shape, array.dtype, buffer=self._map, offset=offset)
                np.copyto(target, array, casting="no")
                carried[name] = TensorRef(offset, array.dtype.str, array.shape)
                offset += -(-array.nbytes // ALIGN) * ALIGN
        return carried

    def view(self, carried: Carried) -> dict[str, np.ndarray]:
        """The arrays of a descriptor: read-only views of the mapping (no copy), or the inline
        ones. Read-only as a request's own bytes are in one process: a model call that outlives
        its cancelled request must not write into a slot a new request now holds."""
        arrays: dict[str, np.ndarray] = {}
        for name, ref in carried.items():
            if isinstance(ref, TensorRef):
                array = np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=self._map, offset=ref.offset)
                array.flags.writeable = False
                arrays[name] = array
            elif isinstance(ref, RawTensor):
                arrays[name] = np.frombuffer(ref.data, ref.dtype).reshape(ref.shape)  # read-only: bytes
            else:
                arrays[name] = ref
        return arrays

    def take(self, slot: int | None, carried: Carried) -> dict[str, np.ndarray]:
        """An answer's arrays; the slot is released once the last of them is dropped (after
        the transport has encoded them), or at once when none lies in shared memory."""
        if slot is None:
            return self.view(carried)
        if not any(isinstance(ref, TensorRef) for ref in carried.values()):
            self.release(slot)
            return self.view(carried)
        base = self._half(slot, True)
        region: np.ndarray = np.ndarray((self.slot_bytes,), np.uint8, buffer=self._map, offset=base)
        # Views of ``region`` keep it alive; numpy stops collapsing ``.base`` at it (its own
        # base is the mmap), so the finalizer runs when the last output array goes.
        weakref.finalize(region, self.release, slot)
        arrays: dict[str, np.ndarray] = {}
        for name, ref in carried.items():
            if isinstance(ref, TensorRef):
                dtype = np.dtype(ref.dtype)
                count = int(np.prod(ref.shape, dtype=np.int64))
                start = ref.offset - base
                arrays[name] = region[start : start + count * dtype.itemsize].view(dtype).reshape(ref.shape)
            elif isinstance(ref, RawTensor):
                arrays[name] = np.frombuffer(ref.data, ref.dtype).reshape(ref.shape)
            else:
                arrays[name] = ref
        return arrays
