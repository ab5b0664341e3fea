"""Image sizes read from headers, before any decoding (pure logic)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from shared.image_header import ImageHeaderError, image_size


def encoded(extension: str, height: int, width: int, **params: int) -> bytes:
    flags: list[int] = []
    for key, value in params.items():
        flags += [getattr(cv2, key), value]
    ok, data = cv2.imencode(extension, np.zeros((height, width, 3), np.uint8), flags)
    assert ok
    return data.tobytes()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("height", "width"), [(1, 1), (480, 640), (2048, 2448), (333, 1000)])
def test_sizes_of_real_jpegs_and_pngs(height: int, width: int) -> None:
    assert image_size(encoded(".png", height, width)) == (width, height)
    assert image_size(encoded(".jpg", height, width)) == (width, height)
    progressive = encoded(".jpg", height, width, IMWRITE_JPEG_PROGRESSIVE=1)
    assert image_size(progressive) == (width, height)


def test_a_bomb_is_measured_from_its_header() -> None:
    assert image_size(png_declaring(16_000, 16_000)) == (16_000, 16_000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a....",
        b"\x89PNG\r\n\x1a\n",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 16,
        b"\xff\xd8",
        b"\xff\xd8\xff\xe0\x00",
        b"\xff\xd8\xff\xe0\x00\x01",
        b"\xff\xd8\x00\x00",
        b"\xff\xd8\xff\xd9",
    ],
)
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ImageHeaderError):
        image_size(data)


def test_truncated_real_jpegs_are_refused_not_misread() -> None:
    data = encoded(".jpg", 64, 64)
    for cut in range(2, 40):
        try:
            size = image_size(data[:cut])
        except ImageHeaderError:
            continue
        assert size == (64, 64)
