"""Per-stage time and peak memory of the restoration pipeline.

    python benchmarks/pipeline.py [--weights DIR] [--photos DIR] [--large] [--hr]

Restores every photo of ``--photos`` (default ``../shared/data/real_old``, quality mode) and, with
``--large``, a synthetic 4000x3000 scratched photo with ``--with-scratch`` semantics. Without
``--weights`` the released architectures with seeded random values are used. Memory is the
process's resident set size, sampled every 5 ms while each stage runs.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from latent_restore.core.imaging import read_photo
from latent_restore.pipeline import Progress, RestorationOptions, RestorationPipeline

try:
    from _weights import write_full_size_weights
except ImportError:  # run as a module
    from benchmarks._weights import write_full_size_weights

GIB = 1 << 30
DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_old"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class StageMeter:
    """Times each stage and records the peak resident memory while it runs."""

    def __init__(self) -> None:
        self.stage = "start"
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak[self.stage] = max(self.peak[self.stage], rss_bytes())
            time.sleep(0.005)

    def enter(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[self.stage] += now - self.started
        self.stage, self.started = stage, now

    def close(self) -> None:
        self.enter("done")
        self._stop.set()
        self._thread.join()


def large_scratched_photo(height: int = 3000, width: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    photo = 0.5 + 0.3 * np.sin(xx / 53)[..., None] * np.cos(yy / 41)[..., None] * np.array([1.0, 0.9, 0.7])
    for _ in range(40):
        row, col = int(rng.integers(0, height)), int(rng.integers(0, width - 600))
        photo[row : row + 3, col : col + 600] = 0.97
    return np.clip(photo, 0, 1).astype(np.float32)


def measure(pipeline: RestorationPipeline, name: str, photo, options: RestorationOptions) -> None:
    meter = StageMeter()
    result = pipeline(photo, options, Progress(on_stage=meter.enter))
    meter.close()
    h, w = result.image.shape[:2]
    stages = [s for s in meter.seconds if s not in ("start", "done")]
    detail = ", ".join(f"{s} {meter.seconds[s]:.1f} s / {meter.peak[s] / GIB:.2f} GiB" for s in stages)
    total = sum(meter.seconds[s] for s in stages)
    print(
        f"{name[:40]:40} {w}x{h}  total {total:.1f} s, peak {max(meter.peak.values()) / GIB:.2f} GiB "
        f"[{result.path}]  {detail}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--large", action="store_true", help="also the 4000x3000 scratched photo")
    parser.add_argument("--only-large", action="store_true", help="only the 4000x3000 scratched photo")
    parser.add_argument("--hr", action="store_true", help="patch attention for the scratched photo")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or write_full_size_weights(Path(tmp) / "weights")
        pipeline = RestorationPipeline.from_pretrained(weights, device=args.device)
        print(f"baseline resident memory {rss_bytes() / GIB:.2f} GiB")
        if not args.only_large:
            for path in sorted(args.photos.iterdir()):
                measure(pipeline, path.name, read_photo(path), RestorationOptions())
        if args.large or args.only_large:
            options = RestorationOptions(with_scratch=True, hr=args.hr)
            measure(pipeline, "synthetic 4000x3000 scratched", large_scratched_photo(), options)


if __name__ == "__main__":
    main()
