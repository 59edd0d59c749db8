"""Training throughput (samples per second) of every stage, and the 2-process scaling on CPU.

Each measurement launches the stage's own entry point (``scripts/train_*.py``) in a fresh process
for a warm-up step plus ``--steps`` timed steps, with one micro-batch per step (``grad_accum=1``),
no sample grids, no intermediate checkpoints and no DataLoader workers. The shared loop logs the
wall time of every step (``time/step_s`` in ``RUN_DIR/logs/scalars.jsonl``: forward, backward,
optimiser and loading the batch, without logging or checkpointing); the warm-up steps are dropped
and the median of the rest is the step time, so samples/s = batch per process x processes / median.

Sections (``--only``, comma-separated, default all three):

* ``tiny``: the configs of ``scripts/configs/tiny`` (the test sizes), their own batch and crop.
* ``full``: the paper-size configs of ``scripts/configs/full`` with a small batch (2) and, by
  default, their 256 px crops; on a CPU a step takes seconds, so only a couple of steps are timed.
  ``--crop`` lowers the crop (the depth-8 U-Nets of pix2pix and colorize keep 256, the smallest
  size their bottleneck allows; for the face generator it sets ``model.load_size``).
* ``scaling``: the same run with one process and with ``torchrun --nproc_per_node 2`` (gloo), the
  per-process batch and thread count (``--threads``, default 1) the same in both; the speed-up is
  the ratio of the samples/s. ``--scaling`` chooses the cases (by default ``tiny:vae_a``, 20
  steps, and the full-size scratch detector at 128 px, batch 2, 5 steps).

The data folders of every config are replaced by the shared sample data (``../shared/data``:
``clean``, ``real_old``, aligned ``faces``). The mapping stages train on VAEs with random weights
(tiny or released size) written to a temporary folder. Perceptual (VGG) losses are off, as they
are without ``--vgg-weights``. Timings on a shared machine are noisy: compare runs taken together.

    python benchmarks/train_throughput.py                                  # tiny, full, scaling
    python benchmarks/train_throughput.py --only tiny
    python benchmarks/train_throughput.py --only tiny,full --stages scratch --steps 2   # adds tiny/full
    python benchmarks/train_throughput.py --only full --stages vae_a,scratch --steps 2 --crop 128
    python benchmarks/train_throughput.py --only scaling --scaling tiny:vae_a,tiny:mapping_quality
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CONFIGS = REPO / "scripts" / "configs"
SIZES = ("tiny", "full")
SECTIONS = ("tiny", "full", "scaling")

logger = logging.getLogger("train_throughput")


@dataclasses.dataclass(frozen=True)
class Stage:
    """How to launch one training stage and which data folders and crop key its config uses."""

    name: str
    script: str
    configs: dict[str, str]  # size -> config file under scripts/configs/<size>/
    data: tuple[str, ...]  # "clean", "real", "faces": which data.*_dirs keys the stage reads
    crop_key: str = "data.crop_size"
    needs_vaes: bool = False
    extra: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # size -> overrides
    min_full_crop: int = 0  # the crop the full-size network needs at least

    def config_path(self, size: str) -> Path:
        return CONFIGS / size / self.configs[size]


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("vae_a", "train_vae.py", {"tiny": "vae_a.yaml", "full": "vae_a.yaml"}, ("clean", "real")),
        Stage("vae_b", "train_vae.py", {"tiny": "vae_b.yaml", "full": "vae_b.yaml"}, ("clean",)),
        Stage(
            "mapping_quality",
            "train_mapping.py",
            {"tiny": "mapping.yaml", "full": "mapping_quality.yaml"},
            ("clean",),
            needs_vaes=True,
        ),
        Stage(
            "mapping_scratch",  # the partial non-local block, trained with defect masks
            "train_mapping.py",
            {"tiny": "mapping.yaml", "full": "mapping_scratch.yaml"},
            ("clean",),
            needs_vaes=True,
            # The tiny config is the plain mapping: turn it into the scratch recipe (as the tests do).
            extra={
                "tiny": (
                    "variant=nonlocal",
                    "model.nonlocal_res_blocks=1",
                    "loss.ttur=false",
                    "discriminator.spectral_norm=true",
                )
            },
        ),
        Stage("scratch", "train_scratch.py", {"tiny": "scratch.yaml", "full": "scratch.yaml"}, ("clean",)),
        Stage(
            "face",
            "train_face.py",
            {"tiny": "face.yaml", "full": "face_256.yaml"},
            ("faces",),
            crop_key="model.load_size",
        ),
        Stage(
            "pix2pix",
            "train_pix2pix.py",
            {"tiny": "pix2pix.yaml", "full": "pix2pix.yaml"},
            ("clean",),
            min_full_crop=256,
        ),
        Stage(
            "colorize",  # phase pretrain (L1), as the configs set it
            "train_colorize.py",
            {"tiny": "colorize.yaml", "full": "colorize.yaml"},
            ("clean",),
            min_full_crop=256,
        ),
    )
}


def data_dirs(size: str) -> dict[str, list[Path]]:
    """Shared sample folders per data kind: the tests' subset for tiny, all clean photos for full."""
    clean = [DATA / "clean" / "Set14", DATA / "clean" / "Set5"] if size == "tiny" else [DATA / "clean"]
    faces = [DATA / "faces" / d for d in ("kair_real_faces", "gfpgan_cropped", "diffbir_aligned")]
    return {"clean": clean, "real": [DATA / "real_old"], "faces": faces}


DATA_KEYS = {"clean": "data.clean_dirs", "real": "data.real_dirs", "faces": "data.face_dirs"}


@dataclasses.dataclass
class Result:
    """One measured run: the resolved settings and the per-step times after the warm-up."""

    stage: str
    size: str
    processes: int
    batch: int = 0
    crop: int = 0
    threads: int = 0
    step_times: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None
    wall_s: float = 0.0

    @property
    def step_s(self) -> float:
        return statistics.median(self.step_times) if self.step_times else float("nan")

    @property
    def samples_per_s(self) -> float:
        return self.batch * self.processes / self.step_s if self.step_times else float("nan")


def write_random_vaes(directory: Path, size: str) -> tuple[Path, Path]:
    """VAE A and B components with random weights: the mapping stages only need their shapes."""
    import torch

    from latent_restore.core.checkpoint import save_component
    from stage1_vae.vae import VAE, VAEConfig

    config = (
        VAEConfig(base_channels=8, latent_channels=8, num_downsamples=2, num_res_blocks=1)
        if size == "tiny"
        else VAEConfig()
    )
    torch.manual_seed(1)
    return save_component(VAE(config), directory / "vae_a"), save_component(VAE(config), directory / "vae_b")


def overrides(
    stage: Stage,
    size: str,
    *,
    steps: int,
    warmup: int,
    batch: int | None,
    crop: int | None,
    threads: int | None,
    device: str,
    vaes: tuple[Path, Path] | None,
) -> list[str]:
    """The ``--set`` list: short run, log every step, nothing else written until the end."""
    sets = [
        f"train.total_steps={warmup + steps}",
        "train.decay_steps=0",
        "train.grad_accum=1",
        "train.log_every=1",
        "train.sample_every=0",
        "train.val_every=0",
        f"train.checkpoint_every={10**9}",
        "train.num_workers=0",
        f"train.device={device}",
        *stage.extra.get(size, ()),
    ]
    for kind, dirs in data_dirs(size).items():
        if kind in stage.data:
            sets.append(f"{DATA_KEYS[kind]}={json.dumps([str(d) for d in dirs])}")
    if batch is not None:
        sets.append(f"train.batch_size={batch}")
    if crop is not None:
        sets.append(f"{stage.crop_key}={crop}")
    if threads is not None:
        sets.append(f"train.cpu_threads={threads}")
    if stage.needs_vaes:
        assert vaes is not None
        sets += [f"vae_a={json.dumps(str(vaes[0]))}", f"vae_b={json.dumps(str(vaes[1]))}"]
    return sets


def read_step_times(run_dir: Path, warmup: int) -> list[float]:
    """``time/step_s`` of every logged step after the warm-up (rank 0 logs the ranks' common steps)."""
    rows = [json.loads(line) for line in (run_dir / "logs" / "scalars.jsonl").read_text().splitlines()]
    return [
        r["time/step_s"]
        for r in sorted(rows, key=lambda r: r["step"])
        if "time/step_s" in r and r["step"] > warmup
    ]


def resolved_setting(run_dir: Path, dotted: str) -> int:
    """A value of the run's resolved ``config.yaml`` (what the run really used)."""
    value = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in dotted.split("."):
        value = value[key]
    return int(value)


def measure(
    stage: Stage,
    size: str,
    *,
    processes: int,
    steps: int,
    warmup: int,
    batch: int | None,
    crop: int | None,
    threads: int | None,
    device: str,
    vaes: tuple[Path, Path] | None,
    timeout: float,
) -> Result:
    """Launch the stage's script (plain or under torchrun) in a throw-away run folder and time it."""
    result = Result(stage.name, size, processes)
    if crop is not None and size == "full" and crop < stage.min_full_crop:
        logger.info(
            "%s: crop %d is below the %d px the network needs; using %d",
            stage.name,
            crop,
            stage.min_full_crop,
            stage.min_full_crop,
        )
        crop = stage.min_full_crop
    sets = overrides(
        stage,
        size,
        steps=steps,
        warmup=warmup,
        batch=batch,
        crop=crop,
        threads=threads,
        device=device,
        vaes=vaes,
    )
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(max(threads, 1))
    with tempfile.TemporaryDirectory(prefix=f"throughput_{stage.name}_") as tmp:
        run_dir = Path(tmp) / "run"
        command = [
            *launcher,
            str(REPO / "scripts" / stage.script),
            "--config",
            str(stage.config_path(size)),
            "--out",
            str(run_dir),
            "--quiet",
            *(arg for s in sets for arg in ("--set", s)),
        ]
        logger.info("%s %s x%d: %d warm-up + %d timed steps", size, stage.name, processes, warmup, steps)
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            result.error = f"timed out after {timeout:.0f} s"
            return result
        result.wall_s = time.perf_counter() - start
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            result.error = lines[-1] if lines else f"exit {proc.returncode}"
            logger.warning("%s %s x%d failed:\n%s", size, stage.name, processes, proc.stderr[-2000:])
            return result
        result.batch = resolved_setting(run_dir, "train.batch_size")
        result.crop = resolved_setting(run_dir, stage.crop_key)
        result.threads = resolved_setting(run_dir, "train.cpu_threads")
        result.step_times = read_step_times(run_dir, warmup)
    logger.info(
        "  %.3f s/step, %.2f samples/s (%.0f s wall with start-up)",
        result.step_s,
        result.samples_per_s,
        result.wall_s,
    )
    return result


def print_stage_table(title: str, results: list[Result], reference: dict[str, Result] | None = None) -> None:
    """One row per stage; with ``reference`` (the tiny results) also how many times slower it is."""
    print(f"\n{title}")
    header = f"{'stage':<16} {'crop':>5} {'batch':>5} {'thr':>4} {'steps':>5} {'s/step':>9} {'samples/s':>10}"
    header += "  tiny/full" if reference else ""
    print(header)
    print("-" * len(header))
    for r in results:
        if r.error:
            print(f"{r.stage:<16} failed: {r.error[:100]}")
            continue
        threads = str(r.threads) if r.threads else "dflt"
        line = (
            f"{r.stage:<16} {r.crop:>5} {r.batch:>5} {threads:>4} {len(r.step_times):>5} "
            f"{r.step_s:>9.3f} {r.samples_per_s:>10.2f}"
        )
        ref = (reference or {}).get(r.stage)
        if ref is not None and not ref.error:
            line += f"  {ref.samples_per_s / r.samples_per_s:>9.1f}x"
        print(line)


def print_scaling_table(pairs: list[tuple[str, Result, Result]]) -> None:
    """Samples/s with 1 and 2 processes at the same per-process batch, speed-up and efficiency."""
    print("\n2-process scaling on CPU (gloo), same batch and threads per process")
    header = (
        f"{'case':<22} {'crop':>5} {'batch/proc':>10} {'thr/proc':>8} {'1 proc sam/s':>12} "
        f"{'2 proc sam/s':>12} {'speed-up':>8} {'efficiency':>10}"
    )
    print(header)
    print("-" * len(header))
    for case, one, two in pairs:
        failed = one.error or two.error
        if failed:
            print(f"{case:<22} failed: {failed[:100]}")
            continue
        speedup = two.samples_per_s / one.samples_per_s
        print(
            f"{case:<22} {one.crop:>5} {one.batch:>10} {one.threads:>8} {one.samples_per_s:>12.2f} "
            f"{two.samples_per_s:>12.2f} {speedup:>7.2f}x {speedup / 2:>9.0%}"
        )


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", type=parse_list, default=list(SECTIONS), help="comma-separated subset of tiny,full,scaling"
    )
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    parser.add_argument(
        "--steps", type=int, help="timed steps (default: 20 tiny, 2 full, 20 tiny / 5 full-size scaling)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument(
        "--batch", type=int, help="batch per process (default: tiny configs' own, 2 full-size)"
    )
    parser.add_argument(
        "--crop", type=int, help="crop size of the full-size runs (default: the configs', 256)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads per process (default: the config's; 1 scaling)"
    )
    parser.add_argument(
        "--scaling",
        default="tiny:vae_a,full:scratch",
        help="SIZE:STAGE cases of the scaling section (full-size cases use --scaling-crop, batch 2)",
    )
    parser.add_argument("--scaling-crop", type=int, default=128, help="crop of the full-size scaling cases")
    parser.add_argument("--device", default="cpu", help="train.device of every run (default cpu)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run before it is abandoned")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    stages = parse_list(args.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {list(STAGES)}")
    cases = [tuple(c.split(":", 1)) for c in parse_list(args.scaling)]
    if any(len(c) != 2 or c[0] not in SIZES or c[1] not in STAGES for c in cases):
        parser.error(f"--scaling takes SIZE:STAGE items with SIZE in {SIZES} and STAGE in {list(STAGES)}")
    if (args.steps is not None and args.steps < 1) or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    sections = args.only
    if not sections or any(s not in SECTIONS for s in sections):
        parser.error(f"--only takes a comma-separated subset of {','.join(SECTIONS)}")
    common = {"warmup": args.warmup, "device": args.device, "timeout": args.timeout}

    with tempfile.TemporaryDirectory(prefix="throughput_vaes_") as tmp:
        vae_cache: dict[str, tuple[Path, Path]] = {}

        def vaes(stage: Stage, size: str) -> tuple[Path, Path] | None:
            if stage.needs_vaes and size not in vae_cache:
                logger.info("writing %s VAE A / B with random weights for the mapping", size)
                vae_cache[size] = write_random_vaes(Path(tmp) / size, size)
            return vae_cache.get(size) if stage.needs_vaes else None

        tiny: dict[str, Result] = {}
        if "tiny" in sections:
            for name in stages:
                stage = STAGES[name]
                tiny[name] = measure(
                    stage,
                    "tiny",
                    processes=1,
                    steps=args.steps or 20,
                    batch=args.batch,
                    crop=None,
                    threads=args.threads,
                    vaes=vaes(stage, "tiny"),
                    **common,
                )
            print_stage_table("tiny configs (scripts/configs/tiny), one process", list(tiny.values()))
        if "full" in sections:
            full = [
                measure(
                    STAGES[name],
                    "full",
                    processes=1,
                    steps=args.steps or 2,
                    batch=args.batch or 2,
                    crop=args.crop,
                    threads=args.threads,
                    vaes=vaes(STAGES[name], "full"),
                    **common,
                )
                for name in stages
            ]
            print_stage_table(
                "full-size configs (scripts/configs/full), one process (tiny/full: samples/s ratio)",
                full,
                tiny or None,
            )
        if "scaling" in sections:
            pairs = []
            for size, name in cases:
                stage = STAGES[name]
                runs = [
                    measure(
                        stage,
                        size,
                        processes=processes,
                        steps=args.steps or (5 if size == "full" else 20),
                        batch=args.batch or (2 if size == "full" else None),
                        crop=args.scaling_crop if size == "full" else None,
                        threads=args.threads or 1,
                        vaes=vaes(stage, size),
                        **common,
                    )
                    for processes in (1, 2)
                ]
                pairs.append((f"{size}:{name}", runs[0], runs[1]))
            print_scaling_table(pairs)


if __name__ == "__main__":
    main()
