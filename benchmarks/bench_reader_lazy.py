"""Peak memory and time of napari-sam's napari reader on a large OME-Zarr and a pyramidal
TIFF: the lazy layers it gives now against reading the image whole (what it did for TIFFs).

No viewer and no model: each case runs ``read_layers`` (lazy) or ``read_volume`` plus
``layer_data`` (whole) in a fresh process, so that peak RSS is its own.

    OMP_NUM_THREADS=1 python benchmarks/bench_reader_lazy.py [--size 16384] [--folder DIR]

The files (uint16 smooth noise, an OME-Zarr 0.4 of 5 levels in 512 px chunks and a deflate
OME-TIFF of 4 levels in 512 px tiles) are written once into DIR (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASE = """
import json, resource, sys, time
t0 = time.perf_counter()
from napari_sam._reader import layer_data, read_layers
from napari_sam.core.volume_io import read_volume
t1 = time.perf_counter()
path, how = sys.argv[1], sys.argv[2]
layers = read_layers(path) if how == "lazy" else [layer_data(read_volume(path))]
t2 = time.perf_counter()
data = layers[0][0]
print(json.dumps({
    "data": f"{len(data)} levels" if isinstance(data, list) else type(data).__name__,
    "open_s": t2 - t1, "imports_s": t1 - t0,
    "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def make_files(folder: Path, size: int) -> tuple[Path, Path]:
    import numpy as np
    import tifffile

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from ome_zarr_files import write_ome_zarr

    omz, tif = folder / f"big{size}.ome.zarr", folder / f"big{size}.ome.tif"
    if omz.exists() and tif.exists():
        return omz, tif
    # Smooth noise: compresses like a real image (not like random bits, not like zeros).
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 4000, (size // 64, size // 64)).astype(np.uint16)
    image = np.repeat(np.repeat(coarse, 64, 0), 64, 1)
    image += rng.integers(0, 200, image.shape, dtype=np.uint16)
    write_ome_zarr(omz, image, "yx", (0.5, 0.5), levels=5, chunk=512)
    opts = {"tile": (512, 512), "compression": "zlib"}
    with tifffile.TiffWriter(tif, bigtiff=True) as w:
        w.write(image, subifds=3, metadata={"axes": "YX"}, **opts)
        for k in (2, 4, 8):
            w.write(image[::k, ::k], subfiletype=1, **opts)
    return omz, tif


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="rows = columns of level 0")
    parser.add_argument("--folder", type=Path, help="where the test files are (made once)")
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_files(args.folder, args.size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        mib = args.size**2 * 2 / 2**20
        print(f"{args.size} x {args.size} uint16 ({mib:.0f} MiB at level 0)")
        # Made in a process of its own: Linux keeps a process's peak RSS across exec, so the
        # cases must not be started from a process that held the image.
        me = [sys.executable, __file__, "--size", str(args.size), "--folder", str(folder)]
        subprocess.run([*me, "--make"], check=True)
        for path in make_files(folder, args.size):  # made: only their names
            for how in ("lazy", "whole"):
                out = subprocess.run(
                    [sys.executable, "-c", CASE, str(path), how],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"{path.name:22s} {how:5s} {r['data']:9s} open {r['open_s']:6.2f} s  "
                    f"peak RSS {r['peak_mib']:6.0f} MiB  (imports {r['imports_s']:.2f} s)"
                )


if __name__ == "__main__":
    main()
