"""The point-to-point message format of the tensor backends (MPI, torch.distributed).

A message is a fixed-size int64 header — dtype code, number of dimensions, then the shape — and
the payload. bfloat16 and float16 travel as their int16 bit patterns: numpy, through which MPI
buffers pass, has no bfloat16, and a bit pattern moves the numbers exactly whatever the transport.
"""

from __future__ import annotations

import torch

#: What a message may carry (an activation or its tangent in any compute dtype, token ids, a mask), by code.
WIRE_DTYPES = (torch.float64, torch.float32, torch.int64, torch.int32, torch.bool, torch.bfloat16, torch.float16)
#: Header length: dtype code, ndim, then up to ``HEADER - 2`` dimensions.
HEADER = 10
#: Dtypes sent as their int16 bit patterns.
AS_BITS = (torch.bfloat16, torch.float16)


def header_of(tensor: torch.Tensor) -> list[int]:
    """The header a receiver needs to allocate ``tensor``; ValueError for what cannot travel."""
    if tensor.dtype not in WIRE_DTYPES or tensor.ndim > HEADER - 2:
        raise ValueError(f"point-to-point messages move tensors of at most {HEADER - 2} dimensions and dtype "
                         f"{', '.join(str(d) for d in WIRE_DTYPES)}, got {tensor.dtype} of shape {tuple(tensor.shape)}")
    return [WIRE_DTYPES.index(tensor.dtype), tensor.ndim, *tensor.shape] + [0] * (HEADER - 2 - tensor.ndim)


def payload(tensor: torch.Tensor) -> torch.Tensor:
    """What goes on the wire for ``tensor``: itself (contiguous), or its int16 bits for a half dtype."""
    tensor = tensor.contiguous()
    return tensor.view(torch.int16) if tensor.dtype in AS_BITS else tensor


def receive_buffer(header: list[int]) -> tuple[torch.Tensor, torch.dtype]:
    """An empty CPU tensor to receive the payload ``header`` announces, and the dtype it stands for."""
    code, ndim, *dims = (int(value) for value in header)
    dtype = WIRE_DTYPES[code]
    return torch.empty(tuple(dims[:ndim]), dtype=torch.int16 if dtype in AS_BITS else dtype), dtype


def restored(buffer: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The received tensor: ``buffer`` itself, or its bits read back as ``dtype``."""
    return buffer.view(dtype) if dtype in AS_BITS else buffer
