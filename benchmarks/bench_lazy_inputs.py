"""Peak memory and time of reading one tile of a large compressed TIFF or OME-Zarr: lazily
(what ``napari-sam segment --tile`` does now) against reading the plane whole (before).

No model runs: this measures the input side only (open, fix the normalisation, identify the
plane, cut one 1024 x 1024 block), each case in a fresh process so that peak RSS is its own.

    OMP_NUM_THREADS=1 python benchmarks/bench_lazy_inputs.py [--size 16384] [--folder DIR]

The test files (a deflate TIFF in 512 px tiles and an OME-Zarr 0.4 of the same uint16 pixels,
about 350 MB each at 16384 px) are written once into DIR (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("tiff-lazy", "tiff-whole", "zarr-lazy", "zarr-whole")


def make_files(folder: Path, size: int) -> tuple[Path, Path]:
    import numpy as np
    import tifffile
    import zarr

    tif, omz = folder / f"slide{size}.tif", folder / f"slide{size}.ome.zarr"
    if tif.exists() and omz.exists():
        return tif, omz
    # Smooth noise: compresses like a real slide (not like random bits, not like zeros).
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 4000, (size // 64 + 1, size // 64 + 1)).astype(np.uint16)
    band = 2048
    with tifffile.TiffWriter(tif, bigtiff=True) as w:

        def rows():
            for r0 in range(0, size, band):
                block = np.repeat(
                    np.repeat(coarse[r0 // 64 : (r0 + band) // 64 + 1], 64, 0), 64, 1
                )
                noise = rng.integers(0, 200, (band, size), dtype=np.uint16)
                yield (block[:band, :size] + noise)[: min(band, size - r0)]

        g = zarr.open_group(str(omz), mode="w", zarr_format=2)
        arr = g.create_array("0", shape=(size, size), chunks=(512, 512), dtype=np.uint16)
        datasets = [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}
        ]
        axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
        g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]

        def tiles():
            for r0, strip in zip(range(0, size, band), rows(), strict=False):
                arr[r0 : r0 + strip.shape[0]] = strip
                for t0 in range(0, strip.shape[0], 512):
                    for c0 in range(0, size, 512):
                        yield strip[t0 : t0 + 512, c0 : c0 + 512]

        w.write(tiles(), shape=(size, size), dtype=np.uint16, tile=(512, 512), compression="zlib")
    return tif, omz


def run_case(case: str, path: Path) -> dict:
    """One case in this process: returns seconds and peak RSS (MiB)."""
    import resource

    from napari_sam.core.embedding import image_key
    from napari_sam.core.lazy_images import open_lazy_image
    from napari_sam.core.normalize import Normalization
    from napari_sam.core.prepared_plane import PreparedPlane
    from napari_sam.core.volume_io import read_volume

    norm = Normalization(contrast_limits=(0, 4200))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    t0 = time.perf_counter()
    if case.endswith("lazy"):
        plane = PreparedPlane(open_lazy_image(path).plane, norm)
        key = plane.key
        block = plane[5000:6024, 7000:8024]
    else:  # before: the whole plane read and prepared, then the block cut from it
        rgb = norm.apply(read_volume(path).data)
        key = image_key(rgb)
        block = rgb[5000:6024, 7000:8024]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "case": case,
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(peak),
        "after_imports_mib": round(base),
        "key": key[:12],
        "block": list(block.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.path)))
        return
    if args.make:
        make_files(args.folder, args.size)
        return
    folder = args.folder or Path(tempfile.mkdtemp())
    # Every step in a process of its own: Linux keeps a parent's peak RSS across fork + exec.
    me = [sys.executable, __file__, "--size", str(args.size)]
    subprocess.run([*me, "--make", "--folder", str(folder)], check=True)
    tif, omz = make_files(folder, args.size)  # made: only their names
    mib = args.size**2 / 2**20
    print(f"{args.size} x {args.size} uint16: {2 * mib:.0f} MiB, prepared RGB {3 * mib:.0f} MiB")
    for case in CASES:
        path = tif if case.startswith("tiff") else omz
        out = subprocess.run(
            [*me, "--case", case, "--path", str(path)], capture_output=True, text=True, check=True
        )
        print(out.stdout.strip())


if __name__ == "__main__":
    main()
