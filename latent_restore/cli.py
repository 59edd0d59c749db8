"""The ``latent-restore`` console script. Each sub-command parses its arguments and calls library code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

logger = logging.getLogger("latent_restore")


def _convert(args: argparse.Namespace) -> int:
    from latent_restore.convert import ConversionError, convert_official

    try:
        written = convert_official(args.official, args.out, overwrite=args.overwrite)
    except ConversionError as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("cannot write the weights set: %s", exc)
        return 2
    for component, path in written.items():
        logger.info("wrote %s -> %s", component.value, path)
    return 0


def _download(args: argparse.Namespace) -> int:
    from latent_restore.convert import ConversionError, ReleaseKind
    from latent_restore.download import DEFAULT_URL_BASE, DownloadError, download_release

    try:
        result = download_release(
            dest=args.dest,
            url_base=args.url_base or DEFAULT_URL_BASE,
            only=ReleaseKind(args.only) if args.only else None,
            keep_archives=args.keep_archives,
            archive_dir=args.archive_dir,
            timeout=args.timeout,
            progress=not args.quiet,
        )
    except DownloadError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    except ConversionError as exc:
        logger.error("refused: %s", exc)
        return 2
    except OSError as exc:
        logger.error("%s", exc)
        return 1
    for name, digest in result.archives.items():
        logger.info("%s: SHA-256 %s", name, digest)
    logger.info(
        "wrote %d components to %s; `latent-restore run` now uses them without --weights",
        len(result.components),
        result.weights_dir,
    )
    return 0


def _weights(args: argparse.Namespace) -> int:
    from latent_restore.weights import HOME_ENV, data_home, find_weight_sets, verify_weight_set

    sets = find_weight_sets(args.weights)
    print(f"data folder: {data_home()} (set {HOME_ENV} to move it)")
    if not any(s.origin.name == "DOWNLOADED" for s in sets):
        print("no downloaded weights there: `latent-restore download` fetches the authors' released ones")
    code = 0
    for found in sets:
        marker = "*" if found.in_use else " "
        print(f"{marker} {found.origin.value}: {found.path}")
        print(f"    modes: {', '.join(found.modes) if found.modes else 'none (not a usable weights set)'}")
        if found.source and isinstance(found.source.get("sources"), list):
            names = [str(entry.get("name")) for entry in found.source["sources"] if isinstance(entry, dict)]
            print(f"    converted from: {', '.join(names)}")
        if args.verify:
            try:
                problems = verify_weight_set(found.path)
            except FileNotFoundError as exc:
                print(f"    not verified: {exc}")
                continue
            for problem in problems:
                print(f"    CHANGED {problem}")
            if not problems:
                print("    verified: every component matches source.json")
            code = code or (1 if problems else 0)
    print("(* = the set used without --weights)")
    return code


WEIGHTS_HELP = (
    "weights directory (default: $LATENT_RESTORE_WEIGHTS, else the downloaded official weights, "
    "else the built-in ones; see `latent-restore weights`)"
)


def _weights_dir(args: argparse.Namespace) -> str | None:
    """The weights a command uses (``latent_restore.weights.resolve_weights``); None, said, if none."""
    from latent_restore.weights import resolve_weights

    resolved = resolve_weights(args.weights)
    if resolved is None:
        logger.error(
            "no weights: this installation has no built-in weights and nothing was downloaded. Run "
            "`latent-restore download` (or convert the release zips with `latent-restore convert "
            "--official global_checkpoints.zip face_checkpoints.zip --out WEIGHTS` and pass --weights)."
        )
        return None
    return str(resolved.path)


def _shard(text: str | None) -> tuple[int, int]:
    """``K/N`` from the command line, else the torchrun rank and world size, else ``0/1``."""
    if text is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            if (rank, world) != (None, None):
                logger.warning(
                    "ignoring %s without %s (torchrun sets both): restoring every photo",
                    "RANK" if world is None else "WORLD_SIZE",
                    "WORLD_SIZE" if world is None else "RANK",
                )
            return 0, 1
        try:
            return int(rank), int(world)
        except ValueError:
            raise argparse.ArgumentTypeError(f"RANK={rank!r}, WORLD_SIZE={world!r}: not integers") from None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants K/N, got {text!r}") from None
    return index, count


def _pipeline(args: argparse.Namespace, weights: str):
    """The pipeline of ``run`` and ``serve``, from their shared device, precision, faces and pixel flags."""
    from latent_restore.pipeline import Precision, RestorationPipeline

    return RestorationPipeline.from_pretrained(
        weights,
        device=args.device,
        precision=Precision(args.precision),
        faces=not args.no_faces,
        max_pixels=args.max_pixels,
    )


def _run(args: argparse.Namespace) -> int:
    from latent_restore.batch import run_batch
    from latent_restore.core.checkpoint import CheckpointError
    from latent_restore.core.config import ConfigError
    from latent_restore.pipeline import (
        Preset,
        RestorationModel,
        RestorationOptions,
        ScratchContext,
        WeightsNotFoundError,
    )

    weights = _weights_dir(args)
    if weights is None:
        return 2
    try:
        shard_index, shard_count = _shard(args.shard)
        options = RestorationOptions(
            with_scratch=args.with_scratch,
            hr=args.hr,
            faces=not args.no_faces,
            preset=Preset(args.preset),
            model=RestorationModel(args.model),
            colorize=args.colorize,
            face_size=args.face_size,
            scratch_context=ScratchContext(args.scratch_context),
        )
        for note in options.ignored_flags():
            logger.warning("%s", note)
        pipeline = _pipeline(args, weights)
        summary = run_batch(
            pipeline,
            args.input,
            args.output,
            options,
            recursive=args.recursive,
            overwrite=args.overwrite,
            save_stages=args.save_stages,
            shard_index=shard_index,
            shard_count=shard_count,
            show_progress=not args.quiet,
        )
    except (
        WeightsNotFoundError,
        FileNotFoundError,
        PermissionError,
        ValueError,
        CheckpointError,
        ConfigError,
        argparse.ArgumentTypeError,
    ) as exc:
        logger.error("%s", exc)
        return 2
    print(summary.report(), file=sys.stderr)
    return summary.exit_code


def _degrade(args: argparse.Namespace) -> int:
    import dataclasses

    import yaml

    from latent_restore.core.config import config_from_dict
    from latent_restore.core.degradations import DegradationConfig, with_defects
    from latent_restore.degrade import degrade_folder

    try:
        if args.config:
            with open(args.config, encoding="utf-8") as handle:
                config = config_from_dict(DegradationConfig, yaml.safe_load(handle) or {})
        else:
            config = DegradationConfig()
        if args.scratches is not None:
            config = with_defects(config, args.scratches)
        if args.texture_dir:
            texture = dataclasses.replace(config.texture, directory=str(args.texture_dir))
            config = dataclasses.replace(config, texture=texture)
        summary = degrade_folder(args.input, args.output, args.seed, config, progress=not args.quiet)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        logger.error("%s", exc)
        return 2
    if not summary.written and not summary.skipped:
        logger.error("no images found in %s", args.input)
        return 2
    return 1 if summary.skipped else 0


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


def _serve(args: argparse.Namespace) -> int:
    from latent_restore.pipeline import WeightsNotFoundError
    from latent_restore.web.app import serve

    weights = _weights_dir(args)
    if weights is None:
        return 2
    try:
        pipeline = _pipeline(args, weights)
        stopped = serve(
            pipeline,
            host=args.host,
            port=args.port,
            max_upload_mb=args.max_upload_mb,
            queue_size=args.queue_size,
            ttl_seconds=args.ttl_minutes * 60,
        )
    except (WeightsNotFoundError, OSError, RuntimeError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    if not stopped:
        # The worker is inside a long torch call: interpreter teardown under it would abort
        # (SIGABRT). The temporary files are already removed, so nothing is lost by leaving now.
        logging.shutdown()
        os._exit(0)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from latent_restore.evaluation import EvalProtocol, evaluate
    from latent_restore.pipeline import RestorationPipeline, WeightsNotFoundError, pix2pix_method

    weights = _weights_dir(args)
    if weights is None:
        return 2
    if args.faces:
        return _eval_faces(args, weights)
    protocol = EvalProtocol(
        args.clean, size=args.size, seed=args.seed, with_scratch=args.with_scratch, held_out_only=not args.all
    )
    try:
        pipeline = RestorationPipeline.from_pretrained(weights, device=args.device, faces=False)
        extra = pix2pix_method(pipeline)
        results = evaluate(
            pipeline,
            protocol,
            args.out,
            extra_methods={"pix2pix": extra} if extra is not None else None,
            show_progress=not args.quiet,
            inception_weights=args.inception_weights,
        )
    except (WeightsNotFoundError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    for name, scores in results["methods"].items():
        extra = f"  mask F1 {scores['mask_f1']:.3f}" if "mask_f1" in scores else ""
        print(f"{name:16} PSNR {scores['psnr']:6.2f} dB  SSIM {scores['ssim']:.4f}{extra}")
    return 0


def _eval_faces(args: argparse.Namespace, weights: os.PathLike[str]) -> int:
    import torch

    from latent_restore.face_evaluation import FaceEvalProtocol, evaluate_faces
    from latent_restore.pipeline import ComponentStore, FaceStage, WeightsNotFoundError, resolve_device

    stage = FaceStage(ComponentStore(weights, resolve_device(args.device), torch.float32))
    if not stage.available():
        logger.error("%s holds no face component (face_256 or face_512)", weights)
        return 2
    protocol = FaceEvalProtocol(args.faces, seed=args.seed, held_out_only=not args.all)
    try:
        generator = stage.store.get(stage.component())
        results = evaluate_faces(generator, protocol, args.out, show_progress=not args.quiet)
    except (WeightsNotFoundError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    for name, scores in results["methods"].items():
        print(
            f"{name:16} PSNR {scores['psnr']:6.2f} dB  SSIM {scores['ssim']:.4f}  "
            f"sharpness {scores['sharpness']:.3f}"
        )
    return 0


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
    # The flags of the commands that build a restoration pipeline (see _pipeline).
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
    convert.set_defaults(handler=_convert)

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
    download.set_defaults(handler=_download)

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
    weights.set_defaults(handler=_weights)

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
        help="with --with-scratch: attend within tiles sized so scratch repair costs about 1.5x the "
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
    run.set_defaults(handler=_run)

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
    evaluation.add_argument("--all", action="store_true", help="use every photo, not only the held-out split")
    evaluation.add_argument("--weights", help=WEIGHTS_HELP)
    evaluation.add_argument("--device", default="auto")
    evaluation.add_argument("--inception-weights", help="torchvision Inception-v3 state dict, to report FID")
    evaluation.set_defaults(handler=_eval)

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
    degrade.set_defaults(handler=_degrade)

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
    serve.set_defaults(handler=_serve)
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
