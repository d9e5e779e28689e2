import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dae import shards
from dae.shards import ImageDecodeError, ShardSchemaError, ShardWriter


def test_png_roundtrip_gray_rgb_16bit():
    rng = np.random.default_rng(0)
    for a in [rng.integers(0, 256, (5, 7), dtype=np.uint8),
              rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
              rng.integers(0, 65536, (5, 7), dtype=np.uint16),
              rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)]:  # 16-bit RGB: not through Pillow
        back = shards.decode_png(shards.encode_png(a))
        assert back.dtype == a.dtype
        np.testing.assert_array_equal(back.reshape(a.shape), a)


def test_writer_names_rows_and_metadata(tmp_path):
    root = str(tmp_path / "ds")
    with ShardWriter(root, "train", dataset="toy", source="unit test", rows_per_shard=4) as w:
        for i in range(10):
            w.add(f"toy/{i}", np.full((3, 4), i, np.uint8), label=i % 3 if i != 5 else None)
    files = shards.list_shards(root, "train")
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert shards.shard_metadata(files[0]) == {"dae.dataset": "toy", "dae.source": "unit test", "dae.format": "1"}
    rows = list(shards.iter_rows(files))
    assert [r["id"] for r in rows] == [f"toy/{i}" for i in range(10)]
    assert rows[5]["label"] is None and rows[4]["label"] == 1
    assert (rows[3]["height"], rows[3]["width"], rows[3]["channels"], rows[3]["split"]) == (3, 4, 1, "train")
    batch = shards.decode_batch({k: np.array([r[k] for r in rows[:2]], dtype=object) for k in ("id", "image")})
    assert batch["image"].shape == (2, 3, 4, 1) and batch["image"][1].max() == pytest.approx(1 / 255)


def test_reader_names_file_and_column(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "img": [b"x"]}), bad)
    with pytest.raises(ShardSchemaError, match=r"bad\.parquet: missing column 'image'"):
        shards.read_shard(str(bad))
    wrong = tmp_path / "wrong.parquet"
    t = pa.table({"id": ["a"], "image": ["not bytes"], "height": [1], "width": [1], "channels": [1],
                  "label": [None], "split": ["x"]})
    pq.write_table(t, wrong)
    with pytest.raises(ShardSchemaError, match=r"wrong\.parquet: column 'image' has type string"):
        shards.read_shard(str(wrong))
    notparquet = tmp_path / "junk.parquet"
    notparquet.write_bytes(b"hello")
    with pytest.raises(ShardSchemaError, match="junk.parquet: not a readable Parquet file"):
        shards.read_shard(str(notparquet))


def test_decode_refuses_bombs_and_garbage():
    with pytest.raises(ImageDecodeError, match="undecodable"):
        shards.decode_png(b"\x89PNG garbage")
    with pytest.raises(ImageDecodeError, match="empty"):
        shards.decode_png(b"")
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        shards.decode_png(buf.getvalue(), max_pixels=1000 * 1000)


def test_rgba_drops_alpha_and_palette_becomes_rgb():
    buf = io.BytesIO()
    Image.new("RGBA", (4, 3), (10, 20, 30, 40)).save(buf, format="PNG")
    a = shards.decode_png(buf.getvalue())
    assert a.shape == (3, 4, 3) and tuple(a[0, 0]) == (10, 20, 30)
