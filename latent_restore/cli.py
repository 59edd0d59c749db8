"""The ``latent-restore`` console script: the argument parser; each sub-command's handler lives in
:mod:`latent_restore.commands` and calls library code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from latent_restore.commands import (
    convert_command,
    degrade_command,
    download_command,
    eval_command,
    run_command,
    serve_command,
    weights_command,
)

logger = logging.getLogger("latent_restore")


WEIGHTS_HELP = (
    "weights directory (default: $LATENT_RESTORE_WEIGHTS, else the downloaded official weights, "
    "else the built-in ones; see `latent-restore weights`)"
)


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a whole number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, got {port}")
    return port


def _positive_float(text: str) -> float:
    """A number above zero for argparse (sizes and durations)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("latent-restore")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _positive_int(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latent-restore", description="Bring old photos back to life.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars; only warnings and errors")
    # The flags of the commands that build a restoration pipeline (see commands.build_pipeline).
    restoring = argparse.ArgumentParser(add_help=False)
    restoring.add_argument("--weights", help=WEIGHTS_HELP)
    restoring.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    restoring.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16 halves memory and is faster where the CPU (AVX-512 BF16/AMX) or GPU supports it "
        "natively; elsewhere fp32 is used (default: fp32)",
    )
    restoring.add_argument(
        "--memory-limit",
        type=_positive_float,
        metavar="GIB",
        help="GiB the restoring networks may use; larger photos go in overlapping tiles "
        "(default: 1.5 on a CPU, 80%% of the free memory on a GPU)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert",
        parents=[common],
        help="convert the officially released checkpoints into a weights directory",
        description="Convert the release zips (global_checkpoints.zip, face_checkpoints.zip) or folders "
        "laid out like them once unzipped ([Global/]checkpoints/..., [Face_Enhancement/]checkpoints/...), "
        "in any mix, into a latent-restore weights directory. Nothing is written unless every file "
        "converts.",
    )
    convert.add_argument(
        "--official",
        required=True,
        nargs="+",
        metavar="PATH",
        help="release zip files and/or folders holding the unzipped official checkpoints",
    )
    convert.add_argument("--out", required=True, help="weights directory to write (missing or empty)")
    convert.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a weights set already in --out, whole (its components are never mixed with new ones)",
    )
    convert.set_defaults(handler=convert_command)

    download = commands.add_parser(
        "download",
        parents=[common],
        help="download and convert the authors' released weights (used automatically afterwards)",
        description="Download global_checkpoints.zip and face_checkpoints.zip (resuming an interrupted "
        "download), verify and convert them into the data folder (see `latent-restore weights`), "
        "where run, serve and eval find them without --weights. Proxies come from https_proxy / "
        "http_proxy / no_proxy. Exit code 1 when the transfer fails (run it again to resume), 2 when "
        "what arrived is refused.",
    )
    download.add_argument(
        "--dest", help="weights directory to write (default: DATA_FOLDER/official, used automatically)"
    )
    download.add_argument(
        "--url-base",
        default=None,
        help="fetch URL_BASE/global_checkpoints.zip and URL_BASE/face_checkpoints.zip instead of the "
        "authors' GitHub release (v1.0)",
    )
    download.add_argument("--only", choices=["global", "face"], help="fetch one archive only")
    download.add_argument("--keep-archives", action="store_true", help="keep the zips after converting")
    download.add_argument(
        "--archive-dir", help="where the zips are downloaded and resumed (default: DATA_FOLDER/downloads)"
    )
    download.add_argument(
        "--timeout", type=float, default=60.0, help="seconds without data before giving up (default: 60)"
    )
    download.set_defaults(handler=download_command)

    weights = commands.add_parser(
        "weights",
        parents=[common],
        help="list the weights sets found, their modes and where they are",
        description="List the weights sets the commands can use, in the order they are chosen: --weights, "
        "$LATENT_RESTORE_WEIGHTS, the downloaded official weights (DATA_FOLDER/official), the built-in "
        "demonstration weights. DATA_FOLDER is $LATENT_RESTORE_HOME, else the platform's data folder "
        "(~/.local/share/latent-restore on Linux).",
    )
    weights.add_argument("--weights", help="also show this weights directory")
    weights.add_argument(
        "--verify", action="store_true", help="check each component against the SHA-256 in source.json"
    )
    weights.set_defaults(handler=weights_command)

    run = commands.add_parser(
        "run",
        parents=[common, restoring],
        help="restore a folder of photos (or one photo)",
        description="Restore photos: scratch detection (with --with-scratch), global restoration, faces. "
        "Each result is written as OUTPUT/<stem>.png; photos already restored are skipped.",
    )
    run.add_argument("--input", required=True, help="a photo or a folder of photos")
    run.add_argument("--output", required=True, help="folder for the restored photos")
    run.add_argument("--recursive", action="store_true", help="also restore photos in sub-folders")
    run.add_argument(
        "--with-scratch", action="store_true", help="detect and repair scratches, cracks and dust"
    )
    run.add_argument(
        "--hr",
        action="store_true",
        help="with --with-scratch: the patch-attention mapping, for large scratched photos",
    )
    run.add_argument(
        "--scratch-context",
        choices=["tiled", "global"],
        default="tiled",
        help="with --with-scratch: attend within windows sized so scratch repair costs about 1.5x the "
        "quality mode (tiled, default) or over the whole photo (global: the released behaviour, "
        "hours on large scans)",
    )
    run.add_argument(
        "--face-size",
        type=int,
        choices=[256, 512],
        help="face generator to use when both are present (default 256; 512 under --preset official --hr)",
    )
    run.add_argument("--no-faces", action="store_true", help="do not enhance faces")
    run.add_argument(
        "--model",
        choices=["two-vae", "pix2pix"],
        default="two-vae",
        help="global restoration network: two-vae (the paper's method, default) or the pix2pix baseline",
    )
    run.add_argument(
        "--colorize",
        action="store_true",
        help="colorize the result as the last stage (keeps lightness; gray photos otherwise stay gray)",
    )
    run.add_argument(
        "--max-pixels",
        type=_positive_int,
        help="refuse photos with more pixels than this, before decoding them "
        "(default: what half of this machine's free memory can restore)",
    )
    run.add_argument(
        "--preset",
        choices=["default", "official"],
        default="default",
        help="official = the released pipeline's resizing and saving (see docs/official-quirks.md)",
    )
    run.add_argument("--save-stages", action="store_true", help="also write each stage's image")
    run.add_argument("--overwrite", action="store_true", help="redo photos whose output exists")
    run.add_argument(
        "--shard", help="K/N: restore only the K-th of N shares (default: torchrun rank/world size)"
    )
    run.set_defaults(handler=run_command)

    evaluation = commands.add_parser(
        "eval",
        parents=[common],
        help="score restoration on synthetically degraded clean photos against classical baselines",
        description="Degrade every clean photo (held-out split unless --all) with a fixed seed, restore "
        "it and report PSNR/SSIM (and scratch-mask F1) next to the degraded input and OpenCV baselines "
        "(and the pix2pix baseline when the weights have a pix2pix component). With --faces, the "
        "face stage alone is scored on the aligned faces of the photos instead.",
    )
    source = evaluation.add_mutually_exclusive_group(required=True)
    source.add_argument("--clean", help="folder of clean photos")
    source.add_argument(
        "--faces",
        help="folder of photos with faces (whole photos or crops): score the face stage on their "
        "aligned, degraded faces against NL-means",
    )
    evaluation.add_argument("--out", required=True, help="folder for results.json, results.md and grid.png")
    evaluation.add_argument("--size", type=int, default=256, help="centre-crop side (default 256)")
    evaluation.add_argument("--seed", type=int, default=0)
    evaluation.add_argument("--with-scratch", action="store_true", help="add scratches, cracks, dust")
    evaluation.add_argument(
        "--hr", action="store_true", help="with --with-scratch: restore with the HR patch-attention mapping"
    )
    evaluation.add_argument("--all", action="store_true", help="use every photo, not only the held-out split")
    evaluation.add_argument("--weights", help=WEIGHTS_HELP)
    evaluation.add_argument("--device", default="auto")
    evaluation.add_argument("--inception-weights", help="torchvision Inception-v3 state dict, to report FID")
    evaluation.set_defaults(handler=eval_command)

    degrade = commands.add_parser(
        "degrade",
        parents=[common],
        help="make synthetic old photos (with defect masks) from a folder of photos",
        description="Degrade every image under --input with the synthetic old-photo model and write "
        "<stem>.png, masks/<stem>.png (0/255), contact_sheet.png and degradations.json to --output. "
        "Exit code 0 on success, 1 if some inputs were unreadable, 2 on a usage error.",
    )
    degrade.add_argument("--input", required=True, help="folder of photos (searched recursively)")
    degrade.add_argument("--output", required=True, help="folder to write (must differ from --input)")
    degrade.add_argument("--seed", type=int, default=0, help="base seed; same seed, same output")
    degrade.add_argument(
        "--scratches",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add structured defects (scratches, cracks, creases, dust, stains); default: on",
    )
    degrade.add_argument("--texture-dir", help="folder of paper textures to overlay")
    degrade.add_argument("--config", help="YAML file with DegradationConfig fields")
    degrade.set_defaults(handler=degrade_command)

    serve = commands.add_parser(
        "serve",
        parents=[common, restoring],
        help="restore photos from a local web page",
        description="Serve a web page (and its JSON API) to upload photos, watch them being restored, "
        "compare before and after, and download the results. Binds to loopback by default; photos "
        "and results stay in a private temporary folder and are deleted after --ttl-minutes and on exit.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, default=7860, help="TCP port; 0 picks a free one (default: 7860)"
    )
    serve.add_argument("--no-faces", action="store_true", help="do not load the face model")
    serve.add_argument(
        "--max-upload-mb", type=_positive_float, default=50, help="largest upload (default: 50)"
    )
    serve.add_argument(
        "--max-pixels",
        type=_positive_int,
        help="largest photo accepted, in pixels (5e7 = 50 megapixels); larger ones answer 413 before "
        "they are decoded (default: what half of this machine's free memory can restore)",
    )
    serve.add_argument(
        "--queue-size", type=_positive_int, default=32, help="most photos waiting at once (default: 32)"
    )
    serve.add_argument(
        "--ttl-minutes", type=_positive_float, default=60, help="how long results are kept (default: 60)"
    )
    serve.set_defaults(handler=serve_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
