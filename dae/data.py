"""Ray Data readers for image shards (the Ray-facing side of :mod:`dae.shards`)."""

from __future__ import annotations

import ray.data

from . import shards, storage


def shard_files(root: str, split: str | None = None) -> list[str]:
    """Schema-checked shard files of ``split`` under ``root``; a clear error when there are none."""
    files = shards.list_shards(root, split)
    if not files:
        where = shards.split_dir(root, split) if split else root
        raise FileNotFoundError(f"no .parquet shards under {where}")
    return shards.validate_shards(files)


def read_shards(root: str, split: str | None = None, files: list[str] | None = None,
                columns: list[str] | None = None, **read_kwargs) -> ray.data.Dataset:
    """A Dataset of shard rows (PNG bytes in ``image``), one read task per file at most."""
    files = files if files is not None else shard_files(root, split)
    fs, _ = storage.resolve(files[0])
    paths = [storage.resolve(f)[1] for f in files]
    ds = ray.data.read_parquet(paths, filesystem=fs, **read_kwargs)
    # select_columns is pushed down into the Parquet scan by Ray Data's optimizer (the read's own
    # columns= argument is deprecated in Ray 2.58)
    if not columns:
        return ds
    return ds.select_columns(list(columns) + (["path"] if read_kwargs.get("include_paths") else []))
