"""Image dimensions read from a JPEG or PNG header, before anything is decoded.

A 249 KB PNG can declare 16,000 x 16,000 pixels: decoding it took the agent from 310 MB to
1.8 GB. A byte limit cannot see that; the header can, at the cost of a few hundred bytes read.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the frame size (all but DHT C4, JPG C8 and DAC CC).
_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), 0xCD, 0xCE, 0xCF}
)
# Markers that stand alone, without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


class ImageHeaderError(ValueError):
    """The bytes are not a JPEG or PNG image whose size can be read."""


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) declared by a PNG or JPEG header; :class:`ImageHeaderError` otherwise."""
    if data.startswith(PNG_SIGNATURE):
        return _png_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    raise ImageHeaderError("not a JPEG or PNG image")


def _png_size(data: bytes) -> tuple[int, int]:
    # The first chunk must be IHDR: length 13, then width and height as big-endian uint32.
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageHeaderError("PNG without an IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise ImageHeaderError("PNG of zero size")
    return int(width), int(height)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    position = 2
    end = len(data)
    while position < end:
        if data[position] != 0xFF:
            raise ImageHeaderError(f"JPEG marker expected at byte {position}")
        while position < end and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= end:
            break
        marker = data[position]
        position += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:  # end of image before any frame
            break
        if position + 2 > end:
            break
        (length,) = struct.unpack(">H", data[position : position + 2])
        if length < 2:
            raise ImageHeaderError(f"JPEG segment of length {length}")
        if marker in _SOF_MARKERS:
            if position + 7 > end:
                break
            height, width = struct.unpack(">HH", data[position + 3 : position + 7])
            if width == 0 or height == 0:
                raise ImageHeaderError("JPEG of zero size (or size given later in DNL)")
            return int(width), int(height)
        position += length
    raise ImageHeaderError("JPEG without a frame header")
