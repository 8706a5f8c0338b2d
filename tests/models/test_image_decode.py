"""``models.images.decode_image``: the one decoder of user-supplied images, on real files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.images import BACKGROUND, decode_image


def _save(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _gradient(height: int = 8, width: int = 12) -> np.ndarray:
    """uint8 grey values 0..255 across the width."""
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


def test_plain_rgb_png_is_unchanged() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    out = decode_image(_save(Image.fromarray(pixels), "PNG"), source="x.png")
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3)
    assert np.array_equal(out, pixels)


def test_sixteen_bit_png_scales_like_its_eight_bit_twin() -> None:
    eight = _gradient()
    sixteen = eight.astype(np.uint16) * 257  # 255 -> 65535
    data = _save(Image.fromarray(sixteen), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data, source="deep.png")
    twin = decode_image(_save(Image.fromarray(eight), "PNG"), source="twin.png")
    assert np.array_equal(out, twin)
    assert out.mean() == pytest.approx(eight.mean())  # before: 16-bit values clipped to 255, mean ~253


def test_sixteen_bit_rounds_value_over_257() -> None:
    values = np.array([[0, 128, 256, 1000, 65535, 32896]], dtype=np.uint16)
    out = decode_image(_save(Image.fromarray(values), "PNG"), source="v.png")
    assert list(out[0, :, 0]) == [0, 0, 1, 4, 255, 128]
    assert np.array_equal(out[..., 0], out[..., 2])


def test_float_tiff_in_unit_range_scales_by_255() -> None:
    values = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    data = _save(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = decode_image(data, source="f.tif")
    assert np.array_equal(out[..., 1], np.round(values.astype(np.float64) * 255).astype(np.uint8))
    assert out.max() == 255  # before: all black


@pytest.mark.parametrize("values", [np.array([[0.0, 300.0]], np.float32), np.array([[0.0, np.nan]], np.float32)])
def test_float_tiff_out_of_range_is_refused(values: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"floating point .* outside \[0, 1\]: its range is unknown"):
        decode_image(_save(Image.fromarray(values), "TIFF"), source="hdr.tif")


def test_32_bit_integer_outside_16_bits_is_refused() -> None:
    values = np.array([[0, 70000]], dtype=np.int32)
    with pytest.raises(ValueError, match="outside 0..65535"):
        decode_image(_save(Image.fromarray(values, mode="I"), "TIFF"), source="i.tif")


def test_32_bit_integer_in_16_bit_range_scales() -> None:
    values = np.array([[0, 65535, 257 * 100]], dtype=np.int32)
    out = decode_image(_save(Image.fromarray(values, mode="I"), "TIFF"), source="i.tif")
    assert list(out[0, :, 0]) == [0, 255, 100]


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((10, 20, 3), np.uint8)  # landscape, a red left edge
    pixels[:, :4] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    data = _save(image, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(data, source="phone.jpg")
    assert out.shape == (20, 10, 3)  # before: (10, 20, 3), unrotated
    # rotated 90 degrees clockwise: the left edge is now the top
    assert out[:3, :, 0].mean() > 200 and out[-3:, :, 0].mean() < 60


def test_rgba_is_composited_on_white() -> None:
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0] = 200
    pixels[0, 0, 3] = 0  # transparent
    pixels[0, 1, 3] = 255  # opaque red-ish
    pixels[0, 2, 3] = 128  # half
    out = decode_image(_save(Image.fromarray(pixels, "RGBA"), "PNG"), source="a.png")
    assert BACKGROUND == (255, 255, 255)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (200, 0, 0)
    assert tuple(out[0, 2]) == pytest.approx((228, 127, 127), abs=1)


def test_palette_with_transparent_colour_is_composited_on_white() -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    out = decode_image(_save(image, "PNG", transparency=0), source="p.png")
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (10, 20, 30)


@pytest.mark.parametrize("format", ["GIF", "PNG"])
def test_animation_gives_its_first_frame(format: str) -> None:
    frames = [Image.new("RGB", (6, 6), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = _save(frames[0], format, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = decode_image(data, source=f"anim.{format.lower()}")
    assert out.shape == (6, 6, 3)
    assert out[..., 0].min() > 200 and out[..., 2].max() < 50


def test_over_the_pixel_limit_is_refused_before_decoding() -> None:
    data = _save(Image.new("RGB", (40, 30)), "PNG")
    assert decode_image(data, source="ok.png", max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ValueError, match=r"bomb.png has 40x31 = 1,240 pixels, over the limit of 1,200"):
        decode_image(_save(Image.new("RGB", (40, 31)), "PNG"), source="bomb.png", max_pixels=1200)


def test_pillows_decompression_bomb_error_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow raises above twice its limit
    with pytest.raises(ValueError, match="bomb.png is too large"):
        decode_image(_save(Image.new("RGB", (20, 20)), "PNG"), source="bomb.png", max_pixels=10**9)


@pytest.mark.parametrize("data", [b"", b"hello", b"\x89PNG\r\n\x1a\n garbage"])
def test_undecodable_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="junk is not a readable image"):
        decode_image(data, source="junk")


def test_truncated_png_is_refused() -> None:
    data = _save(Image.fromarray(_gradient(64, 64)), "PNG")
    with pytest.raises(ValueError, match="cut.png is not a readable image"):
        decode_image(data[: len(data) // 2], source="cut.png")
