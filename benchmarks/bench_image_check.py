"""Cost of the image-folder check (robustmix.data.image_check) on ImageNet-sized JPEGs.

    python -m benchmarks.bench_image_check                       # 2,000 files, 1 and all cores
    python -m benchmarks.bench_image_check --files 20000 --workers 1,4,16

Writes ``--files`` JPEGs of 500×375 (ImageNet's most common size; smooth patterns with
noise, quality 90, about 70 kB each) into a temporary folder, then times per file: a full
PIL decode, the check's decode (JPEG at 1/8 scale) and ``Image.verify`` (header only,
which passes truncated JPEGs); then ``find_bad_images`` over the whole folder from a cold
cache with each worker count, and once more from the cache. ImageNet-1k's time is the
per-file rate times its 1.33 million files divided by the workers, an extrapolation
(process start and the listing's stat calls aside).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

if __package__ in (None, ""):
    from pathlib import Path
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_machine, machine_info

IMAGENET_FILES = 1_331_167  # ImageNet-1k train + val


def _write(folder: str, n: int, seed: int, size: tuple[int, int]) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    os.makedirs(os.path.join(folder, "c"), exist_ok=True)
    paths = []
    for i in range(n):
        base = np.sin(xx / (20 + i % 30)) * 60 + np.cos(yy / (15 + i % 17)) * 60 + 128
        pixels = base[..., None] + rng.normal(0, 12, (size[1], size[0], 3))
        path = f"c/{i}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, path), quality=90)
        paths.append(path)
    return paths


def _per_file_ms(fn, folder: str, paths: list[str]) -> float:
    times = []
    for path in paths:
        started = time.perf_counter()
        fn(os.path.join(folder, path))
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def _decoders():
    from PIL import Image

    from robustmix.data.image_check import image_problem

    def full(path):
        with Image.open(path) as image:
            image.load()

    def verify(path):
        with Image.open(path) as image:
            image.verify()
    return {"full_decode": full, "check": image_problem, "verify": verify}


def run(*, files: int = 2000, workers: tuple[int, ...] | None = None, sample: int = 200,
        seed: int = 0, size: tuple[int, int] = (500, 375)) -> dict:
    """Time the check; returns ``{"machine", "settings", "results"}`` (milliseconds per
    file for each decoder, seconds for ``find_bad_images`` cold per worker count and
    cached)."""
    from robustmix.data import image_check

    workers = workers or tuple(sorted({1, os.cpu_count() or 1}))
    results: dict = {}
    cache_before = os.environ.get("ROBUSTMIX_CACHE_DIR")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["ROBUSTMIX_CACHE_DIR"] = os.path.join(folder, "cache")  # not the user's
        paths = _write(os.path.join(folder, "data"), files, seed, size)
        root = os.path.join(folder, "data")
        results["mean_kb"] = sum(os.path.getsize(os.path.join(root, p)) for p in paths) \
            / files / 1e3
        for name, fn in _decoders().items():
            results[f"{name}_ms"] = _per_file_ms(fn, root, paths[:sample])
        saved = image_check.PARALLEL_FROM
        image_check.PARALLEL_FROM = 0  # time the pool itself, whatever the folder's size
        try:
            for count in workers:
                image_check.cache_path(root).unlink(missing_ok=True)
                started = time.perf_counter()
                image_check.find_bad_images(root, paths, workers=count)
                results[f"cold_{count}_workers_s"] = time.perf_counter() - started
            started = time.perf_counter()
            image_check.find_bad_images(root, paths)
            results["cached_s"] = time.perf_counter() - started
        finally:
            image_check.PARALLEL_FROM = saved
            if cache_before is None:
                os.environ.pop("ROBUSTMIX_CACHE_DIR", None)
            else:
                os.environ["ROBUSTMIX_CACHE_DIR"] = cache_before
    return {"machine": machine_info("cpu"),
            "settings": {"files": files, "workers": list(workers), "size": list(size)},
            "results": results}


def format_results(result: dict) -> str:
    r, files = result["results"], result["settings"]["files"]
    lines = [format_machine(result["machine"]),
             f"{files} JPEGs of {result['settings']['size'][0]}x{result['settings']['size'][1]}"
             f", mean {r['mean_kb']:.0f} kB",
             f"per file, median: full decode {r['full_decode_ms']:.2f} ms, check (1/8 scale) "
             f"{r['check_ms']:.2f} ms, verify (header) {r['verify_ms']:.2f} ms"]
    for count in result["settings"]["workers"]:
        seconds = r[f"cold_{count}_workers_s"]
        lines.append(f"find_bad_images, cold, {count} worker(s): {seconds:.2f} s "
                     f"({1e3 * seconds / files:.2f} ms per file)")
    lines.append(f"find_bad_images, cached: {r['cached_s']:.3f} s")
    minutes = r["check_ms"] * IMAGENET_FILES / 1e3 / 60
    lines.append(f"ImageNet-1k at the check's rate: {minutes:.0f} core-minutes "
                 f"({minutes / 16:.1f} minutes on 16 cores), extrapolated")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", default=None, help="comma list (default: 1 and all cores)")
    args = parser.parse_args()
    workers = tuple(int(w) for w in args.workers.split(",")) if args.workers else None
    print(format_results(run(files=args.files, workers=workers)))


if __name__ == "__main__":
    main()
