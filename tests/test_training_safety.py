"""Training never loses a run and survives damaged files (issue 12: items 2, 11, 12 and a stray ``RANK``).

Everything here runs on data the tests make themselves: a toy regression task for the loop, and a
handful of tiny photos (some of them broken) for the tiny VAE B config.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO
from PIL import Image
from test_training import ToyTask

from latent_restore.core import dist
from latent_restore.core.data import (
    CleanImageDataset,
    ImagePool,
    NoReadableImagesError,
    image_problem,
)
from latent_restore.core.data import files as data_module
from latent_restore.core.imaging import ImageReadError, decode_image
from latent_restore.core.training import (
    StepContext,
    TrainConfig,
    Trainer,
    TrainingRefused,
    launch,
)

TINY = REPO / "scripts" / "configs" / "tiny"
pytestmark = pytest.mark.usefixtures("restore_torch_state")


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the torchrun variables they need; none leak in from the environment."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


# --- a toy task that can be interrupted ----------------------------------------------------------


class _Stop(Exception):
    """Raised by :class:`StoppingTask` to stand in for a killed process."""


class StoppingTask(ToyTask):
    """The toy regression, interrupted when it is about to compute iteration ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.stop_at = stop_at

    def step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.step == self.stop_at:
            raise _Stop
        return super().step(batch, ctx)


def _config(total_steps: int = 8) -> TrainConfig:
    return TrainConfig(
        total_steps=total_steps,
        decay_steps=2,
        batch_size=2,
        num_workers=0,
        log_every=1,
        sample_every=0,
        checkpoint_every=2,
    )


def _trainer(run: Path, stop_at: int | None = None, total_steps: int = 8) -> Trainer:
    return Trainer(StoppingTask(stop_at), _config(total_steps), run, torch.device("cpu"), quiet=True)


def _step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def _interrupted_run(run: Path, stop_at: int = 6) -> None:
    """A run killed after its checkpoint at ``stop_at`` (last.pt), previous.pt two steps before it."""
    with pytest.raises(_Stop):
        _trainer(run, stop_at).fit()


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.task.models["net"].state_dict().items()}


# --- item 11: previous.pt and the fallback to it ------------------------------------------------


def test_each_checkpoint_keeps_the_one_before_as_previous(tmp_path: Path) -> None:
    _interrupted_run(tmp_path)
    last, previous = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "previous.pt"
    assert (_step_of(last), _step_of(previous)) == (6, 4)
    assert not last.samefile(previous)
    assert not list((tmp_path / "checkpoints").glob(".latent-restore-*"))  # no temporaries left behind


def _damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "text":
        path.write_text("this is not a checkpoint\n")
    elif how == "foreign":  # a valid torch file, but not a training checkpoint
        torch.save({"weight": torch.zeros(3)}, path)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("empty", "empty file (0 bytes)"),
        ("truncated", "truncated or damaged"),
        ("garbage", "not a torch checkpoint"),
        ("text", "not a torch checkpoint"),
        ("foreign", "not a training checkpoint"),
    ],
)
def test_resume_falls_back_to_previous_when_last_is_unusable(
    tmp_path: Path, how: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    straight = _trainer(tmp_path / "straight")
    straight.fit()
    run = tmp_path / "run"
    _interrupted_run(run)
    last = run / "checkpoints" / "last.pt"
    _damage(last, how)

    resumed = _trainer(run)
    with caplog.at_level(logging.WARNING):
        resumed.fit(resume="auto")
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"{last}: {reason}" in warning and "previous.pt at step 4" in warning
    assert "weights_only" not in warning  # never torch's advice to load an unsafe file unsafely
    # Continuing from step 4 gives exactly the uninterrupted run.
    for key, value in _weights(straight).items():
        assert torch.equal(_weights(resumed)[key], value), key
    # The unusable file was replaced, not rotated into previous.pt.
    assert (_step_of(last), _step_of(run / "checkpoints" / "previous.pt")) == (8, 6)
    rows = [json.loads(line) for line in (run / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))


def test_resume_uses_previous_when_last_is_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _interrupted_run(tmp_path)
    (tmp_path / "checkpoints" / "last.pt").unlink()
    trainer = _trainer(tmp_path)
    with caplog.at_level(logging.WARNING):
        trainer.resume("auto")
    assert trainer.step == 4 and "last.pt: missing" in caplog.text


def test_resume_refuses_clearly_when_no_checkpoint_is_usable(tmp_path: Path) -> None:
    _interrupted_run(tmp_path)
    last, previous = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "previous.pt"
    _damage(last, "truncated")
    _damage(previous, "empty")
    with pytest.raises(TrainingRefused) as refused:
        _trainer(tmp_path).fit(resume="auto")
    message = str(refused.value)
    assert f"{last}: truncated" in message and f"{previous}: empty file (0 bytes)" in message
    assert "--overwrite" in message and "--resume PATH" in message
    # An explicitly named damaged file is refused the same way, naming it, with no fallback.
    with pytest.raises(TrainingRefused, match=r"previous\.pt: empty file"):
        _trainer(tmp_path).resume(str(previous))
    with pytest.raises(TrainingRefused, match="not found"):
        _trainer(tmp_path).resume(str(tmp_path / "nowhere.pt"))


def test_a_checkpoint_of_other_networks_is_refused_with_a_reason(tmp_path: Path) -> None:
    _interrupted_run(tmp_path)
    trainer = Trainer(
        StoppingTask(), dataclasses.replace(_config(), ema_decay=0.5), tmp_path, torch.device("cpu")
    )
    with pytest.raises(TrainingRefused, match=r"its ema \[\] are not this run's \['net'\]"):
        trainer.resume("auto")


def test_explicit_resume_from_previous_keeps_it(tmp_path: Path) -> None:
    _interrupted_run(tmp_path)
    previous = tmp_path / "checkpoints" / "previous.pt"
    trainer = _trainer(tmp_path)
    trainer.fit(resume=str(previous))
    assert _step_of(previous) == 6  # step 6 of this timeline, not of the abandoned one
    assert _step_of(tmp_path / "checkpoints" / "last.pt") == 8


# --- item 2: a run folder is never restarted silently --------------------------------------------


def test_trainer_refuses_a_fresh_start_over_checkpoints(tmp_path: Path) -> None:
    _trainer(tmp_path).fit()
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()
    with pytest.raises(TrainingRefused, match="--resume auto"):
        _trainer(tmp_path).fit()
    assert last.read_bytes() == before
    _trainer(tmp_path).fit(overwrite=True)  # asked for explicitly
    assert _step_of(last) == 8


@dataclasses.dataclass
class ToyConfig:
    """A stage config around the toy task, for :func:`launch`."""

    train: TrainConfig = dataclasses.field(default_factory=_config)


TOY_SETTINGS = [f"train.{f.name}={getattr(_config(), f.name)}" for f in dataclasses.fields(TrainConfig)]
TOY_SETTINGS = [s for s in TOY_SETTINGS if not s.startswith("train.precision")]


def _launch(run: Path, *overrides: str, **kwargs: object) -> Path:
    return launch(
        ToyConfig,
        lambda config, device: StoppingTask(),
        config_path=None,
        overrides=[*TOY_SETTINGS, *overrides],
        out=str(run),
        quiet=True,
        argv=["train", *overrides],
        **kwargs,
    )


def _files(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in ("config.yaml", "command.txt", "checkpoints/last.pt")}


def test_relaunching_a_finished_run_without_resume_is_refused(tmp_path: Path) -> None:
    _launch(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(TrainingRefused) as refused:
        _launch(tmp_path, "train.total_steps=4", "train.decay_steps=1")
    assert "--resume auto" in str(refused.value) and "--overwrite" in str(refused.value)
    assert _files(tmp_path) == before  # nothing of the finished run was touched
    _launch(tmp_path, resume="auto")  # continuing a finished run changes nothing
    assert _step_of(tmp_path / "checkpoints" / "last.pt") == 8


def test_overwrite_starts_afresh_and_discards_the_old_checkpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _launch(tmp_path)
    with caplog.at_level(logging.WARNING):
        _launch(
            tmp_path, "train.total_steps=3", "train.decay_steps=1", "train.checkpoint_every=5", overwrite=True
        )
    assert "removed" in caplog.text
    assert _step_of(tmp_path / "checkpoints" / "last.pt") == 3
    # The old run's checkpoints are gone, so no fallback can ever resume the discarded run.
    assert not (tmp_path / "checkpoints" / "previous.pt").exists()
    assert "total_steps: 3" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(TrainingRefused, match="contradict"):
        _launch(tmp_path, overwrite=True, resume="auto")


def test_continuing_from_a_foreign_checkpoint_is_refused_over_own_checkpoints(tmp_path: Path) -> None:
    other, run = tmp_path / "other", tmp_path / "run"
    _launch(other)
    _launch(run, "train.total_steps=4", "train.decay_steps=1")
    foreign = other / "checkpoints" / "previous.pt"
    with pytest.raises(TrainingRefused, match="holds checkpoints of its own"):
        _launch(run, resume=str(foreign))
    assert _step_of(run / "checkpoints" / "last.pt") == 4
    with pytest.raises(TrainingRefused, match="would delete"):
        _launch(run, resume=str(run / "checkpoints" / "last.pt"), overwrite=True)
    _launch(run, resume=str(foreign), overwrite=True)
    assert _step_of(run / "checkpoints" / "last.pt") == 8


def test_resume_auto_does_not_retrain_over_final_weights_without_checkpoints(tmp_path: Path) -> None:
    component = tmp_path / "weights" / "vae_a"
    component.mkdir(parents=True)
    (component / "config.json").write_text("{}")
    with pytest.raises(TrainingRefused, match="final weights"):
        _launch(tmp_path, resume="auto")
    with pytest.raises(TrainingRefused, match="already holds a training run"):
        _launch(tmp_path)
    assert not (tmp_path / "checkpoints").exists()


# --- a stray RANK --------------------------------------------------------------------------------


def test_a_stray_rank_without_world_size_is_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.dist_info() == dist.DistInfo(0, 1, 0)
    with caplog.at_level(logging.WARNING):
        _launch(tmp_path)
    assert "RANK=3 and LOCAL_RANK=1 set but WORLD_SIZE is not" in caplog.text
    # The run wrote its checkpoint: it was the main (only) process, not a silent rank 3 of 1.
    assert _step_of(tmp_path / "checkpoints" / "last.pt") == 8


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK is not"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, r"RANK=5 is outside 0\.\.1"),
        ({"WORLD_SIZE": "0", "RANK": "0"}, "at least 1"),
        ({"WORLD_SIZE": "two", "RANK": "0"}, "not an integer"),
    ],
)
def test_an_inconsistent_torchrun_environment_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(dist.DistributedEnvError, match=message):
        dist.dist_info()


def test_world_size_without_a_rendezvous_address_is_refused_before_joining(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(dist.DistributedEnvError, match="MASTER_ADDR and MASTER_PORT are not"):
        dist.init_distributed(torch.device("cpu"))
    assert not dist.is_initialized()


# --- item 12: unreadable images in a training folder ---------------------------------------------


def _photo(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.BICUBIC)


def _encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _jpeg_with_marker_bytes_in_a_comment(image: Image.Image) -> bytes:
    """A JPEG whose COM segment holds an end-of-image byte pair, as an EXIF thumbnail would."""
    data = _encoded(image, "JPEG", quality=90)
    comment = b"thumbnail \xff\xd9 inside"
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return data[:2] + segment + data[2:]


GOOD = {
    "plain.jpg": lambda im: _encoded(im, "JPEG", quality=90),
    "progressive.jpg": lambda im: _encoded(im, "JPEG", quality=90, progressive=True),
    "restarts.jpg": lambda im: _encoded(im, "JPEG", quality=90, restart_marker_blocks=1),
    "trailer.jpg": lambda im: _encoded(im, "JPEG", quality=90) + b"\x00\x00ftypmp42 appended video",
    "comment.jpg": _jpeg_with_marker_bytes_in_a_comment,
    "plain.png": lambda im: _encoded(im, "PNG"),
    "gray.png": lambda im: _encoded(im.convert("L"), "PNG"),
    "plain.tif": lambda im: _encoded(im, "TIFF"),
    "lzw.tiff": lambda im: _encoded(im, "TIFF", compression="tiff_lzw"),
    "plain.bmp": lambda im: _encoded(im, "BMP"),
    "plain.webp": lambda im: _encoded(im, "WEBP", quality=90),
}
"""Usable files of every training format, including JPEG structures a naive end-marker test gets wrong."""


@pytest.mark.parametrize("name", sorted(GOOD))
def test_image_check_agrees_with_the_decoder(tmp_path: Path, name: str) -> None:
    data = GOOD[name](_photo(1))
    good = tmp_path / name
    good.write_bytes(data)
    assert image_problem(good) is None
    decode_image(good)
    # Cut anywhere in the pixel data, the file is rejected, and the decoder agrees it cannot be read.
    for fraction in (0.5, 0.9):
        cut = tmp_path / f"cut{fraction}_{name}"
        cut.write_bytes(data[: int(len(data) * fraction)])
        reason = image_problem(cut)
        assert reason is not None, f"{cut.name} was accepted"
        with pytest.raises((ImageReadError, OSError)):
            decode_image(cut)


def test_image_check_reads_headers_not_pixels_for_png_jpeg_tiff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(path: object) -> None:
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(data_module, "decode_image", no_decoding)
    for name in ("plain.jpg", "progressive.jpg", "comment.jpg", "trailer.jpg", "plain.png", "lzw.tiff"):
        path = tmp_path / name
        path.write_bytes(GOOD[name](_photo(2, (640, 480))))
        assert image_problem(path) is None, name


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"<html>not found</html>", "not an image file"),
        (b"\xff\xd8\xff\xe0", "not an image file"),
        ("jpeg-headers-only", "cannot decode"),
    ],
)
def test_image_check_names_the_reason(tmp_path: Path, content: bytes | str, reason: str) -> None:
    if content == "jpeg-headers-only":
        data = _encoded(_photo(3), "JPEG", quality=90)
        content = data[: data.index(b"\xff\xda") + 20]  # cut just after the start of the scan
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    problem = image_problem(path)
    assert problem is not None and reason in problem


def _folder_with_broken_files(root: Path, good: int = 3) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    for index in range(good):
        _photo(index).save(root / f"good_{index}.png")
    jpeg = _encoded(_photo(9), "JPEG", quality=90)
    broken = [root / "truncated.jpg", root / "empty.png", root / "notes.jpg"]
    broken[0].write_bytes(jpeg[: len(jpeg) // 2])
    broken[1].write_bytes(b"")
    broken[2].write_text("not a photo")
    return broken


def test_image_pool_skips_unreadable_files_and_lists_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _folder_with_broken_files(tmp_path)
    with caplog.at_level(logging.WARNING):
        dataset = CleanImageDataset(tmp_path, crop_size=32, length=8)
    assert [p.name for p in dataset.pool.paths] == ["good_0.png", "good_1.png", "good_2.png"]
    assert {p for p, _ in dataset.pool.unreadable} == set(broken)
    assert "skipping 3 of 6 image files" in caplog.text
    for path in broken:
        assert str(path) in caplog.text
    for index in range(len(dataset)):  # every sample loads: the broken files are never reached
        assert dataset[index]["image"].shape == (3, 32, 32)


def test_image_pool_refuses_a_folder_of_unreadable_files(tmp_path: Path) -> None:
    broken = _folder_with_broken_files(tmp_path, good=0)
    with pytest.raises(NoReadableImagesError) as refused:
        ImagePool(tmp_path)
    assert "none of the 3 image files" in str(refused.value)
    assert all(str(path) in str(refused.value) for path in broken)


def _vae_b_overrides(images: Path) -> list[str]:
    return [
        f"data.clean_dirs={json.dumps([str(images)])}",
        "data.length=6",  # one epoch of 3 steps x 2 visits every listed file once
        "train.total_steps=3",
        "train.decay_steps=1",
        "train.sample_every=0",
        "train.checkpoint_every=10",
    ]


@pytest.mark.usefixtures("_keep_logging")
def test_training_runs_past_broken_images_and_relaunch_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real entry point: broken photos are skipped (the run once died at step ~5), and a
    second launch of the finished run without --resume exits 2 and leaves it intact."""
    images, run = tmp_path / "images", tmp_path / "run"
    broken = _folder_with_broken_files(images)
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import train_vae
    finally:
        sys.path.remove(str(REPO / "scripts"))
    args = ["--config", str(TINY / "vae_b.yaml"), "--out", str(run), "--quiet"]
    for override in _vae_b_overrides(images):
        args += ["--set", override]
    assert train_vae.main(args) == 0
    log = (run / "train.log").read_text()
    assert "skipping 3 of 6 image files" in log and all(str(p) in log for p in broken)
    assert (run / "weights" / "vae_b_quality" / "model.safetensors").is_file()

    before = (run / "checkpoints" / "last.pt").read_bytes(), (run / "config.yaml").read_bytes()
    with pytest.raises(SystemExit) as exited:
        train_vae.main([*args, "--set", "train.total_steps=2"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "Traceback" not in err
    assert ((run / "checkpoints" / "last.pt").read_bytes(), (run / "config.yaml").read_bytes()) == before
    assert train_vae.main([*args, "--resume", "auto"]) == 0


@pytest.fixture
def _keep_logging() -> Iterator[None]:
    """Entry points configure the root logger; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
