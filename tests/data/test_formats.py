"""User image files: bit depth, alpha and EXIF orientation survive a read/write round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from agileir.data.formats import image_format, orient, read_picture, write_picture
from agileir.errors import ImageError

RNG = np.random.default_rng(0)


def _pixels(shape, dtype):
    top = 65535 if dtype == np.uint16 else 255
    return RNG.integers(0, top + 1, size=shape, dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("shape", [(9, 13), (9, 13, 3), (9, 13, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_lossless_round_trip_keeps_depth_and_channels(tmp_path, ext, shape, dtype):
    pixels = _pixels(shape, dtype)
    path = write_picture(tmp_path / f"x{ext}", pixels)
    back = read_picture(path)
    assert back.pixels.dtype == dtype and back.pixels.shape == shape
    np.testing.assert_array_equal(back.pixels, pixels)


def test_sixteen_bit_png_is_read_at_full_depth_independently_of_pillow(tmp_path):
    # Pillow reduces 16-bit colour PNG to 8 bits; the values here need all 16.
    pixels = (np.arange(6 * 5 * 3).reshape(6, 5, 3) * 257 + 1).astype(np.uint16)
    path = write_picture(tmp_path / "deep.png", pixels)
    assert Image.open(path).mode == "RGB"  # what Pillow alone would give (8-bit)
    np.testing.assert_array_equal(read_picture(path).pixels, pixels)


@pytest.mark.parametrize("ext,fmt", [(".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP")])
def test_eight_bit_formats_read_and_write(tmp_path, ext, fmt):
    pixels = _pixels((16, 12, 3), np.uint8)
    path = write_picture(tmp_path / f"p{ext}", pixels)
    pic = read_picture(path)
    assert pic.format == fmt and pic.pixels.shape == (16, 12, 3) and pic.pixels.dtype == np.uint8
    assert Image.open(path).format == fmt


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    raw = _pixels((5, 7, 3), np.uint8)
    image = Image.fromarray(raw)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    image.save(path, exif=exif, quality=100)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    np.testing.assert_array_equal(read_picture(path).pixels, expected)
    np.testing.assert_array_equal(orient(np.asarray(Image.open(path)), orientation), expected)


def test_formats_that_cannot_hold_the_data_are_refused_without_a_file(tmp_path):
    with pytest.raises(ImageError, match="16-bit"):
        write_picture(tmp_path / "a.jpg", _pixels((4, 4, 3), np.uint16))
    with pytest.raises(ImageError, match="alpha"):
        write_picture(tmp_path / "a.jpg", _pixels((4, 4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_bad_files_give_one_line_errors(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage")
    for name in ("corrupt.png", "corrupt.jpg", "corrupt.tif", "missing.png"):
        with pytest.raises(ImageError) as info:
            read_picture(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
    with pytest.raises(ImageError, match="unsupported image format"):
        image_format(tmp_path / "anim.gif")


def test_failed_write_leaves_no_partial_file(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(ImageError, match="cannot write"):
        write_picture(blocker / "out.png", _pixels((4, 4), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


def test_written_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    path = write_picture(tmp_path / "p.png", _pixels((4, 4), np.uint8))
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def _probe_matches_read(path):
    from agileir.data.formats import probe_picture

    info, pixels = probe_picture(path), read_picture(path).pixels
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    bits = 16 if pixels.dtype == np.uint16 else 8
    assert (info.height, info.width, info.channels, info.bits) == (*pixels.shape[:2], channels, bits), path.name


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("shape", [(9, 13), (9, 13, 3), (9, 13, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_probe_tells_what_read_picture_returns_without_decoding(tmp_path, ext, shape, dtype):
    _probe_matches_read(write_picture(tmp_path / f"x{ext}", _pixels(shape, dtype)))


def test_probe_on_pillow_modes_and_orientation(tmp_path):
    Image.fromarray(_pixels((6, 9, 3), np.uint8)).convert("P").save(tmp_path / "palette.png")
    pal = Image.fromarray(_pixels((6, 9, 3), np.uint8)).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "palette_alpha.png", transparency=0)
    Image.fromarray(_pixels((6, 9, 2), np.uint8), mode="LA").save(tmp_path / "gray_alpha.png")
    Image.fromarray(_pixels((6, 9), np.uint8)).convert("1").save(tmp_path / "bilevel.bmp")
    Image.fromarray(_pixels((6, 9, 4), np.uint8)).save(tmp_path / "alpha.webp", lossless=True)
    rotated = Image.fromarray(_pixels((6, 9, 3), np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "portrait.jpg", exif=exif)
    import png  # 16-bit gray with a tRNS colour: pypng hands back an alpha channel

    with open(tmp_path / "deep_trns.png", "wb") as f:
        png.Writer(9, 6, greyscale=True, bitdepth=16, transparent=0).write(f, _pixels((6, 9), np.uint16))
    for path in sorted(tmp_path.iterdir()):
        _probe_matches_read(path)


def test_check_writable_is_the_rule_write_picture_applies(tmp_path):
    from agileir.data.formats import check_writable

    for fmt in ("JPEG", "WEBP", "BMP"):
        with pytest.raises(ImageError, match="16-bit"):
            check_writable(tmp_path / "x", fmt, 3, 16)
    with pytest.raises(ImageError, match="alpha"):
        check_writable(tmp_path / "x", "JPEG", 4, 8)
    for fmt in ("PNG", "TIFF"):
        check_writable(tmp_path / "x", fmt, 4, 16)
    check_writable(tmp_path / "x", "WEBP", 4, 8)


def test_jpeg_quality_is_passed_through_and_checked(tmp_path):
    pixels = _pixels((32, 32, 3), np.uint8)
    low = write_picture(tmp_path / "low.jpg", pixels, quality=10).stat().st_size
    high = write_picture(tmp_path / "high.jpg", pixels, quality=95).stat().st_size
    assert low < high
    with pytest.raises(ImageError, match="quality"):
        write_picture(tmp_path / "bad.jpg", pixels, quality=0)
    assert not (tmp_path / "bad.jpg").exists()


def test_data_modules_compile_without_escape_warnings():
    import warnings
    from pathlib import Path

    import agileir.data

    for source in sorted(Path(agileir.data.__file__).parent.glob("*.py")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # SyntaxWarning (3.12+) / DeprecationWarning (3.11) for "\ "
            compile(source.read_text(), str(source), "exec")


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 10000)])  # above Pillow's error and its warning level
def test_images_above_the_pixel_limit_are_one_line_errors_in_every_reader(tmp_path, bomb_png, size):
    import warnings

    from agileir.data.formats import probe_picture
    from agileir.data.io import read_image

    path = bomb_png(tmp_path / "bomb.png", *size)
    pixels = f"{size[0] * size[1]:,} pixels"
    for reader in (probe_picture, read_picture, read_image):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no stray DecompressionBombWarning either
            with pytest.raises(ImageError) as err:
                reader(path)
        message = str(err.value)
        assert pixels in message and "--max-pixels" in message and "\n" not in message


def test_sixteen_bit_and_tiff_files_obey_the_pixel_limit(tmp_path):
    from agileir.data.formats import probe_picture
    from agileir.data.io import pixel_limit, set_pixel_limit

    tiff = write_picture(tmp_path / "a.tif", np.zeros((10, 20), np.uint16))
    png16 = write_picture(tmp_path / "a.png", np.zeros((10, 20, 3), np.uint16))
    before = pixel_limit()
    set_pixel_limit(199)
    try:
        for path in (tiff, png16):
            for reader in (probe_picture, read_picture):
                with pytest.raises(ImageError, match="200 pixels is above the limit of 199"):
                    reader(path)
        set_pixel_limit(200)
        assert read_picture(tiff).pixels.shape == (10, 20)
    finally:
        set_pixel_limit(before)
