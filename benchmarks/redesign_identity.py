"""Are the outputs of ``latent-restore run`` byte-identical before and after a refactoring?

    python benchmarks/redesign_identity.py --save DIR      # on the old code: record the outputs
    python benchmarks/redesign_identity.py --compare DIR   # on the new code: re-run and compare

Runs ``latent-restore run`` in-process, on the CPU with a fixed thread count (float sums depend on
it), over ``examples/`` and ``../shared/data/real_old``:

- quality mode with the built-in weights (``latent_restore/default_weights``);
- ``--with-scratch`` with weights converted from rule-generated released checkpoints
  (``../shared/spec``'s weight rule, the fixtures' salt).

``--save`` writes every output plus ``manifest.json`` (the photo selection, thread count and each
output's SHA-256). ``--compare`` re-runs the manifest's selection and reports, per file, whether
the bytes and the decoded pixels are identical; it exits 1 if any output differs or is missing.
The inputs are only read (they are linked into a temporary folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

try:
    from _weights import SHARED, write_rule_official_weights
except ImportError:  # run as a module
    from benchmarks._weights import SHARED, write_rule_official_weights

from latent_restore.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = REPO / "latent_restore" / "default_weights"
SOURCES = {"examples": REPO / "examples", "real_old": SHARED / "data" / "real_old"}
SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


@dataclass(frozen=True)
class Case:
    """One ``latent-restore run`` invocation: a source folder under one mode and weights set."""

    source: str
    mode: str

    @property
    def name(self) -> str:
        return f"{self.source}__{self.mode}"


CASES = tuple(Case(source, mode) for mode in ("quality", "scratch") for source in SOURCES)


def _select(folder: Path, max_pixels: int | None, max_count: int | None) -> list[str]:
    """Photo names of ``folder``, sorted, without those over ``max_pixels``, at most ``max_count``."""
    names = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in SUFFIXES:
            continue
        with Image.open(path) as image:
            width, height = image.size
        if max_pixels is None or width * height <= max_pixels:
            names.append(path.name)
    return names[:max_count] if max_count is not None else names


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_case(case: Case, photos: list[str], out: Path, weights: dict[str, Path], work: Path) -> None:
    """Restore ``photos`` of ``case.source`` into ``out`` through the CLI's own ``main``."""
    inputs = work / f"in_{case.name}"
    inputs.mkdir()
    for name in photos:
        (inputs / name).symlink_to(SOURCES[case.source] / name)
    flags = ["--with-scratch"] if case.mode == "scratch" else []
    argv = ["run", "--quiet", "--device", "cpu", "--input", str(inputs), "--output", str(out)]
    argv += ["--weights", str(weights[case.mode]), "--overwrite", *flags]
    start = time.perf_counter()
    code = cli_main(argv)
    print(f"  {case.name}: {len(photos)} photos in {time.perf_counter() - start:.1f} s (exit {code})")
    if code != 0:
        raise SystemExit(f"latent-restore run failed for {case.name} (exit {code})")


def _run_all(selection: dict[str, list[str]], out: Path, threads: int) -> dict[str, str]:
    """Run every case into ``out/<case>/``; the SHA-256 of each output keyed by ``case/file``."""
    torch.set_num_threads(threads)
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="redesign_identity_") as tmp:
        work = Path(tmp)
        weights = {"quality": BUILT_IN, "scratch": write_rule_official_weights(work / "official")}
        for case in CASES:
            _run_case(case, selection[case.source], out / case.name, weights, work)
            for path in sorted((out / case.name).rglob("*")):
                if path.is_file():
                    digests[str(path.relative_to(out))] = _digest(path)
    return digests


def _pixels(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def _compare(before: Path, after: Path, recorded: dict[str, str]) -> int:
    """Print one line per output; the number of outputs that differ or are missing on either side."""
    produced = {str(p.relative_to(after)) for p in after.rglob("*") if p.is_file()}
    bad = 0
    for name in sorted(set(recorded) | produced):
        if name not in produced:
            print(f"MISSING  {name} (made before, not now)")
            bad += 1
            continue
        if name not in recorded:
            print(f"NEW      {name} (made now, not before)")
            bad += 1
            continue
        same_bytes = _digest(after / name) == recorded[name]
        mode_a, pixels_a = _pixels(before / name)
        mode_b, pixels_b = _pixels(after / name)
        same_pixels = (
            mode_a == mode_b and pixels_a.shape == pixels_b.shape and np.array_equal(pixels_a, pixels_b)
        )
        if same_bytes and same_pixels:
            print(f"same     {name}")
            continue
        bad += 1
        detail = "bytes differ" if not same_bytes else "bytes equal"
        if same_pixels:
            detail += ", pixels identical"
        elif pixels_a.shape == pixels_b.shape:
            diff = np.abs(pixels_a.astype(np.int16) - pixels_b.astype(np.int16))
            detail += f", pixels differ: max |d| {diff.max()}, {np.count_nonzero(diff)} values"
        else:
            detail += f", shape {pixels_a.shape} -> {pixels_b.shape}"
        print(f"DIFFERS  {name}: {detail}")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--save", type=Path, help="record the outputs of the current code in this folder")
    action.add_argument("--compare", type=Path, help="re-run and compare with the outputs saved here")
    parser.add_argument(
        "--max-pixels", type=int, default=None, help="with --save: skip real_old photos with more pixels"
    )
    parser.add_argument(
        "--max-count", type=int, default=None, help="with --save: at most this many per folder"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)

    if args.save is not None:
        if args.save.exists() and any(args.save.iterdir()):
            parser.error(f"{args.save} exists and is not empty")
        selection = {
            name: _select(folder, args.max_pixels, args.max_count) for name, folder in SOURCES.items()
        }
        print(f"saving to {args.save}: {', '.join(f'{k} {len(v)} photos' for k, v in selection.items())}")
        digests = _run_all(selection, args.save, args.threads)
        manifest = {"selection": selection, "threads": args.threads, "outputs": digests}
        (args.save / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"saved {len(digests)} outputs")
        return 0

    manifest = json.loads((args.compare / "manifest.json").read_text())
    with tempfile.TemporaryDirectory(prefix="redesign_after_") as tmp:
        after = Path(tmp)
        print(f"re-running the selection of {args.compare} with {manifest['threads']} thread(s)")
        _run_all(manifest["selection"], after, manifest["threads"])
        bad = _compare(args.compare, after, manifest["outputs"])
    total = len(manifest["outputs"])
    print(
        f"{total - bad} of {total} outputs identical" + ("" if bad == 0 else f"; {bad} differ or are missing")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
