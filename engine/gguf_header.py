"""A GGUF file's metadata and tensor shapes, read from its header alone.

``gguf.GGUFReader`` builds Python objects for every metadata array, the tokenizer's tens of
thousands of tokens included: seconds per file. The layer count, hidden size and parameter
count that pages and the memory estimate need are a few scalars and the tensor shapes,
which this reads in milliseconds, skipping over the arrays. Format: llama.cpp's
``docs/gguf.md`` (versions 2 and 3, little-endian).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

# Value types: their struct format (fixed-size ones), and the two of variable size.
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, int | float | bool | str]  # scalars and strings; arrays are left out
    tensors: tuple[tuple[str, tuple[int, ...]], ...]  # name and shape (GGUF order: fastest-varying first)


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> int | float | bool:
        value = struct.unpack_from("<" + fmt, self.data, self.at)[0]
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = int(self.take("Q"))
        text = bytes(self.data[self.at : self.at + length]).decode("utf-8", "replace")
        self.at += length
        return text

    def value(self, kind: int) -> int | float | bool | str | None:
        if kind in _FIXED:
            return self.take(_FIXED[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = int(self.take("I")), int(self.take("Q"))
            if item in _FIXED:
                self.at += count * struct.calcsize(_FIXED[item])
            else:
                for _ in range(count):
                    self.value(item)
            return None
        raise ValueError(f"unknown GGUF value type {kind} at byte {self.at}")


def read_gguf_header(path: Path) -> GGUFHeader:
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data)
        if bytes(data[:4]) != b"GGUF":
            raise ValueError("not a GGUF file")
        cursor.at = 4
        version = int(cursor.take("I"))
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not read here")
        tensor_count, kv_count = int(cursor.take("Q")), int(cursor.take("Q"))
        metadata: dict[str, int | float | bool | str] = {}
        for _ in range(kv_count):
            key = cursor.string()
            value = cursor.value(int(cursor.take("I")))
            if value is not None:
                metadata[key] = value
        tensors = []
        for _ in range(tensor_count):
            name = cursor.string()
            dims = tuple(int(cursor.take("Q")) for _ in range(int(cursor.take("I"))))
            cursor.take("I")  # the tensor's quantisation type
            cursor.take("Q")  # its offset in the data section
            tensors.append((name, dims))
        return GGUFHeader(metadata, tuple(tensors))
