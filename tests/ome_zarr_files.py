"""OME-Zarr images made inside the tests with zarr (OME-NGFF 0.4: zarr v2; 0.5: zarr v3)."""

from __future__ import annotations

import numpy as np
import zarr


def pixels(shape, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


def write_ome_zarr(
    path, image, axes, scale, *, version="0.4", levels=1, ms_scale=None, translation=None, chunk=32
):
    """An OME-Zarr image of ``image`` (level 0) and ``levels - 1`` halvings in y and x, in
    chunks of ``chunk`` along y and x, each level with ``translation`` (if given)."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    datasets = []
    for level in range(levels):
        factor = 2**level
        data = image[(..., slice(None, None, factor), slice(None, None, factor))]
        chunks = tuple(chunk if n in "yx" else 1 for n in axes)
        g.create_array(str(level), data=data, chunks=chunks)
        s = [v * factor if n in "yx" else v for v, n in zip(scale, axes, strict=True)]
        transforms = [_scale(s)]
        if translation is not None:
            transforms.append({"type": "translation", "translation": list(translation)})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    types = {"t": "time", "c": "channel"}
    ms = {
        "version": version,
        "axes": [
            {
                "name": n,
                "type": types.get(n, "space"),
                **({"unit": "micrometer"} if n in "zyx" else {}),
            }
            for n in axes
        ],
        "datasets": datasets,
    }
    if ms_scale is not None:
        ms["coordinateTransformations"] = [_scale(ms_scale)]
    if version == "0.4":
        g.attrs["multiscales"] = [ms]
    else:
        del ms["version"]
        g.attrs["ome"] = {"version": version, "multiscales": [ms]}
    return path


def _scale(values):
    return {"type": "scale", "scale": [float(v) for v in values]}


def write_plate(path):
    """An HCS plate group (not an image: readers refuse it with a pointer to one image)."""
    import zarr

    zarr.open_group(str(path), mode="w", zarr_format=2).attrs["plate"] = {"wells": []}
