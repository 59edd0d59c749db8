"""What each ``latent-restore`` sub-command does once its arguments are parsed.

The parser (:mod:`latent_restore.cli`) hands each handler its :class:`argparse.Namespace`; the
handler calls library code, reports through logging and returns the exit code (0 done, 1 some
photos or checks failed, 2 refused before starting).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger("latent_restore")


def convert_command(args: argparse.Namespace) -> int:
    """``convert``: released checkpoints -> a weights set; 2 when anything is refused."""
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


def download_command(args: argparse.Namespace) -> int:
    """``download``: fetch, verify and convert the release; 1 on a transfer failure, 2 when refused."""
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


def weights_command(args: argparse.Namespace) -> int:
    """``weights``: list the weight sets found and which one is used; 1 when ``--verify`` finds changes."""
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


def weights_dir(args: argparse.Namespace) -> str | None:
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


def parse_shard(text: str | None) -> tuple[int, int]:
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


def build_pipeline(args: argparse.Namespace, weights: str):
    """The pipeline of ``run`` and ``serve``, from the flags they share: device, precision, memory
    limit, faces and the largest photo."""
    from latent_restore.pipeline import Precision, RestorationPipeline

    return RestorationPipeline.from_pretrained(
        weights,
        device=args.device,
        precision=Precision(args.precision),
        faces=not args.no_faces,
        memory_limit=None if args.memory_limit is None else int(args.memory_limit * 2**30),
        max_pixels=args.max_pixels,
    )


def run_command(args: argparse.Namespace) -> int:
    """``run``: restore a photo or a folder through the batch runner; its summary decides the exit code."""
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

    weights = weights_dir(args)
    if weights is None:
        return 2
    try:
        shard_index, shard_count = parse_shard(args.shard)
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
        pipeline = build_pipeline(args, weights)
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


def degrade_command(args: argparse.Namespace) -> int:
    """``degrade``: write synthetic old photos from clean ones; 1 when some inputs were skipped."""
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


def serve_command(args: argparse.Namespace) -> int:
    """``serve``: the web page over one pipeline, until interrupted."""
    from latent_restore.pipeline import WeightsNotFoundError
    from latent_restore.web.app import serve

    weights = weights_dir(args)
    if weights is None:
        return 2
    try:
        pipeline = build_pipeline(args, weights)
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


def eval_command(args: argparse.Namespace) -> int:
    """``eval``: score the restoration (or, with ``--faces``, the face stage) on seeded degradations."""
    from latent_restore.evaluation import EvalProtocol, evaluate
    from latent_restore.pipeline import RestorationPipeline, WeightsNotFoundError, pix2pix_method

    weights = weights_dir(args)
    if weights is None:
        return 2
    if args.faces:
        return _eval_faces(args, weights)
    if args.hr and not args.with_scratch:
        logger.error("--hr is a scratch mode: give --with-scratch too")
        return 2
    protocol = EvalProtocol(
        args.clean,
        size=args.size,
        seed=args.seed,
        with_scratch=args.with_scratch,
        hr=args.hr,
        held_out_only=not args.all,
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
