"""The PNG header is checked against a row's height/width/channels columns before the image is decoded
(the scan sizes batches from the columns, so a row that lies about them must not be decoded)."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dae import inference, shards

RNG = np.random.default_rng(0)


def pillow_png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def raw_png(height: int, width: int, depth: int, color: int) -> bytes:
    """A PNG written by hand (Pillow writes no 16-bit RGB, RGBA or LA): zero pixels."""
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row = 1 + (width * samples * depth + 7) // 8
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))]
    if color == 3:
        chunks.append((b"PLTE", bytes(range(12))))
    chunks += [(b"IDAT", zlib.compress(bytes(row * height))), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)


def palette(colors: int = 16) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 255, (5, 7, 3), dtype=np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=colors)


PNGS = {
    "gray 8-bit": pillow_png(Image.fromarray(RNG.integers(0, 255, (5, 7), dtype=np.uint8))),
    "gray 16-bit": shards.encode_png(RNG.integers(0, 65535, (5, 7), dtype=np.uint16)),
    "gray 1-bit": pillow_png(Image.new("1", (7, 5), 1)),
    "gray with tRNS": pillow_png(Image.new("L", (7, 5), 9), transparency=9),
    "RGB": shards.encode_png(RNG.integers(0, 255, (5, 7, 3), dtype=np.uint8)),
    "RGBA": pillow_png(Image.fromarray(RNG.integers(0, 255, (5, 7, 4), dtype=np.uint8))),
    "LA": pillow_png(Image.new("LA", (7, 5), (3, 200))),
    "palette": pillow_png(palette()),
    "palette with transparency": pillow_png(palette(), transparency=0),
    "palette 2-bit": pillow_png(palette(4), bits=2),
    "RGB 16-bit": raw_png(5, 7, 16, 2),
    "RGBA 16-bit": raw_png(5, 7, 16, 6),
    "LA 16-bit": raw_png(5, 7, 16, 4),
    "gray 4-bit": raw_png(5, 7, 4, 0),
}


@pytest.mark.parametrize("name", list(PNGS))
def test_png_header_gives_the_shape_decode_png_returns(name):
    data = PNGS[name]
    h, w, c, depth = shards.png_header(data)
    assert (h, w, c) == shards.decode_png(data).shape == (5, 7, c)
    assert depth == data[24] and depth in (1, 2, 4, 8, 16)
    assert c == (1 if name.startswith(("gray", "LA")) else 3)


# every (bit depth, color type) pair the PNG standard allows
VALID = ([(d, 0) for d in (1, 2, 4, 8, 16)] + [(d, 3) for d in (1, 2, 4, 8)]
         + [(d, t) for d in (8, 16) for t in (2, 4, 6)])


@pytest.mark.parametrize("depth, color", VALID)
def test_png_header_agrees_with_decode_png_for_every_valid_depth_and_color_type(depth, color):
    data = raw_png(5, 7, depth, color)
    h, w, c, d = shards.png_header(data)
    assert (h, w, c) == shards.decode_png(data).shape and d == depth
    assert shards.PNG_CHANNELS[(depth, color)] == c


def test_png_header_refuses_every_invalid_depth_and_color_type():
    for depth in range(33):
        for color in range(8):
            ihdr = b"IHDR" + struct.pack(">IIBBBBB", 7, 5, depth, color, 0, 0, 0)
            head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
            if (depth, color) in VALID:
                assert shards.png_header(head)[:2] == (5, 7)
            else:
                with pytest.raises(shards.ImageDecodeError, match=f"bit depth {depth} with color type {color}"):
                    shards.png_header(head)


def test_png_header_reads_only_the_first_33_bytes():
    data = shards.encode_png(np.zeros((3000, 4000, 3), np.uint8))
    assert shards.png_header(data[:33]) == (3000, 4000, 3, 8)


@pytest.mark.parametrize("data, says", [
    (b"", "empty"),
    (b"\x89PN", "truncated"),
    (b"this is not an image at all, not even close", "not a PNG"),
    (pillow_png(Image.new("RGB", (7, 5))).replace(b"PNG", b"GIF", 1), "not a PNG"),
    (PNGS["RGB"][:20], "truncated"),
    (PNGS["RGB"][:29] + b"\x00\x00\x00\x00", "checksum"),
    (raw_png(5, 7, 16, 3), "bit depth 16 with color type 3"),
    (raw_png(0, 7, 8, 0), "empty image"),
], ids=["empty", "short signature", "text", "GIF signature", "cut IHDR", "bad CRC", "16-bit palette", "0 rows"])
def test_png_header_refuses_what_is_no_valid_png(data, says):
    with pytest.raises(shards.ImageDecodeError, match=says):
        shards.png_header(data)


def test_png_header_refuses_other_formats():
    buf = io.BytesIO()
    Image.new("RGB", (7, 5)).save(buf, format="JPEG")
    with pytest.raises(shards.ImageDecodeError, match="not a PNG"):
        shards.png_header(buf.getvalue())


# ---------------------------------------------------------------- prepare_batch


def gray(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)


def shard_batch(rows: list[tuple[str, bytes, int, int, int]]) -> dict:
    """A batch as Ray Data hands it to prepare_batch: shard columns as numpy arrays."""
    ids, images, hs, ws, cs = zip(*rows)
    col = np.empty(len(rows), dtype=object)
    col[:] = list(images)
    return {"id": np.array(ids, dtype=object), "image": col, "height": np.array(hs, np.int32),
            "width": np.array(ws, np.int32), "channels": np.array(cs, np.int8),
            "label": np.zeros(len(rows), np.int64), "split": np.array(["test"] * len(rows), dtype=object)}


@pytest.fixture
def decoded(monkeypatch):
    """The PNG bytes prepare_batch decodes, in order."""
    seen: list[bytes] = []
    real = inference.decode_png

    def record(data, *args, **kwargs):
        seen.append(bytes(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(inference, "decode_png", record)
    return seen


def test_a_row_whose_columns_lie_is_an_error_row_and_is_never_decoded(decoded):
    good = [shards.encode_png(gray(28, 28, s)) for s in range(3)]
    big = shards.encode_png(np.zeros((30, 40, 3), np.uint8))
    batch = shard_batch([("a", good[0], 28, 28, 1), ("liar", big, 28, 28, 1), ("b", good[1], 28, 28, 1),
                         ("c", good[2], 28, 28, 1)])
    out = inference.prepare_batch(batch, 1)
    assert list(out[inference.ERROR_STAGE]) == ["", "header", "", ""]
    assert out[inference.ERROR][1] == ("PNG header says 30x40x3, the row's columns say 28x28x1 (height x width x "
                                       "channels); the image was not decoded")
    assert list(out[inference.ERROR][[0, 2, 3]]) == ["", "", ""]
    assert big not in decoded and decoded == [good[0], good[1], good[2]]
    # the good rows are what they would be alone; the liar gets a placeholder of the batch's shape
    assert out[inference.INPUT].shape == (4, 28, 28, 1)
    for i, png in zip((0, 2, 3), good):
        np.testing.assert_array_equal(out[inference.INPUT][i], shards.to_float(shards.decode_png(png)))
    assert not out[inference.INPUT][1].any()


@pytest.mark.parametrize("shape, columns", [
    ((28, 30, 1), (28, 30, 1)),  # the truth
    ((28, 30, 1), (30, 28, 1)),  # height and width swapped
    ((28, 30, 1), (28, 31, 1)),  # width
    ((28, 30, 1), (27, 30, 1)),  # height
    ((28, 30, 3), (28, 30, 1)),  # channels
    ((28, 30, 1), (28, 30, 3)),
])
def test_any_lie_counts_height_width_or_channels(decoded, shape, columns):
    png = shards.encode_png(np.zeros(shape, np.uint8))
    out = inference.prepare_batch(shard_batch([("x", png, *columns)]), 1, convert=True)
    if shape == columns:
        assert out[inference.ERROR][0] == "" and decoded == [png]
    else:
        assert out[inference.ERROR_STAGE][0] == "header" and decoded == []
        assert out[inference.ERROR][0].startswith("PNG header says {}x{}x{}, the row's columns say {}x{}x{} ".format(
            *shape, *columns))


def test_an_rgba_or_palette_png_matches_three_channel_columns(decoded):
    rows = [("rgba", PNGS["RGBA"], 5, 7, 3), ("p", PNGS["palette with transparency"], 5, 7, 3),
            ("la", PNGS["LA"], 5, 7, 1), ("g16", PNGS["gray 16-bit"], 5, 7, 1)]
    out = inference.prepare_batch(shard_batch(rows), 3, convert=True)
    assert list(out[inference.ERROR]) == ["", "", "", ""] and len(decoded) == 4


def test_a_non_png_row_is_an_error_row_and_the_others_go_on(decoded):
    good = shards.encode_png(gray(8, 8, 1))
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="JPEG")
    batch = shard_batch([("junk", b"not a png", 8, 8, 1), ("ok", good, 8, 8, 1), ("jpeg", buf.getvalue(), 8, 8, 1),
                         ("cut", good[:20], 8, 8, 1)])
    out = inference.prepare_batch(batch, 1)
    assert list(out[inference.ERROR_STAGE]) == ["decode", "", "decode", "decode"]
    assert "not a PNG" in out[inference.ERROR][0] and "not a PNG" in out[inference.ERROR][2]
    assert "truncated" in out[inference.ERROR][3]
    assert out[inference.ERROR][1] == "" and decoded == [good]


@pytest.mark.parametrize("columns", [(100, 100, 1), (1, 1, 1)], ids=["truthful", "lying"])
def test_the_bomb_check_still_refuses_an_oversized_image_whatever_its_columns_say(decoded, columns):
    png = shards.encode_png(np.zeros((100, 100), np.uint8))
    out = inference.prepare_batch(shard_batch([("big", png, *columns)]), 1, max_pixels=50 * 50)
    assert out[inference.ERROR_STAGE][0] == "decode" and decoded == []  # refused from its header
    assert out[inference.ERROR][0] == "image of 100x100 = 10000 pixels exceeds the limit of 2500 (decompression bomb?)"


def test_a_batch_without_the_shape_columns_is_decoded_as_before():
    png = shards.encode_png(gray(6, 9, 2))
    out = inference.prepare_batch({"id": np.array(["a"], dtype=object), "image": [png]}, 1)
    assert out[inference.ERROR][0] == "" and out[inference.INPUT].shape == (1, 6, 9, 1)
