"""Where a run's numbers and pictures go: ``logs/scalars.jsonl``, sample grids, TensorBoard, ``train.log``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from PIL import Image

from latent_restore.core import dist

logger = logging.getLogger(__name__)


class RunLogger:
    """Scalars to ``logs/scalars.jsonl`` and sample grids to ``samples/*.png``, always; both also to
    TensorBoard when it is installed (the optional ``train`` extra). Only rank 0 creates one.
    """

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.log_dir = run_dir / "logs"
        self.sample_dir = run_dir / "samples"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.scalars_path = self.log_dir / "scalars.jsonl"
        self._truncate_after(resume_step)
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard is not installed: scalars go to %s only", self.scalars_path)
        else:
            self.writer = SummaryWriter(str(self.log_dir), purge_step=resume_step)

    def _truncate_after(self, step: int | None) -> None:
        """Drop lines a killed run logged after its last checkpoint, so a resumed log reads as one run."""
        if not self.scalars_path.exists():
            return
        if step is None:
            self.scalars_path.unlink()
            return
        kept = [
            line
            for line in self.scalars_path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.scalars_path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        with open(self.scalars_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def images(self, step: int, images: Mapping[str, torch.Tensor]) -> None:
        from torchvision.utils import make_grid

        for name, batch in images.items():
            grid = make_grid(batch.detach().float().cpu().clamp(-1, 1), nrow=min(8, batch.shape[0]))
            grid = (grid + 1) / 2
            if self.writer is not None:
                self.writer.add_image(name, grid, step)
            self.sample_dir.mkdir(parents=True, exist_ok=True)
            pixels = (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(self.sample_dir / f"{name.replace('/', '_')}_{step:08d}.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def setup_logging(run_dir: Path | None, quiet: bool = False) -> None:
    """Console: INFO on rank 0 (WARNING with ``quiet``), WARNING elsewhere.

    Rank 0 also writes everything from INFO up to ``RUN_DIR/train.log``, quiet or not: the file is
    the record of the run.
    """
    main = dist.is_main_process()
    console = logging.StreamHandler()
    console.setLevel(logging.INFO if main and not quiet else logging.WARNING)
    handlers: list[logging.Handler] = [console]
    if main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log", encoding="utf-8"))
    fmt = f"%(asctime)s [rank {dist.get_rank()}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING, format=fmt, handlers=handlers, force=True
    )
