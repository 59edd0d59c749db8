"""The ``degrade`` command: make synthetic old photos (and their defect masks) from a folder of photos.

Useful to inspect what the training data looks like, to build evaluation sets with known ground
truth, and to test the restoration pipeline on controlled damage. Each image gets its own
generator from ``(seed, index)``, where ``index`` is its position among the sorted relative paths:
its result depends on the seed, that position and its own pixels only, and re-running with the
same seed and folder reproduces every file bit for bit.

Output layout (``<rel>`` is the input's relative folder, ``<stem>`` its name without suffix)::

    OUTPUT/<rel>/<stem>.png          degraded photo
    OUTPUT/masks/<rel>/<stem>.png    defect mask, 0 or 255
    OUTPUT/contact_sheet.png         originals next to degraded copies (thumbnails)
    OUTPUT/degradations.json         the seed, the config and every image's recorded ops

Inputs are only read. Every file is written to a temporary name and moved into place with
``os.replace``, so an interrupted run never leaves a half-written PNG under a final name.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from latent_restore.core.atomic import write_atomic
from latent_restore.core.config import config_to_dict
from latent_restore.core.data import list_images, load_rgb
from latent_restore.core.degradations import DegradationConfig, sample_degradation
from latent_restore.core.output_rules import check_inputs_untouched, check_output_dir, is_inside

logger = logging.getLogger(__name__)

MASK_DIR = "masks"
CONTACT_SHEET = "contact_sheet.png"
PARAMS_FILE = "degradations.json"


@dataclass
class DegradeSummary:
    """What :func:`degrade_folder` did.

    Attributes:
        written: degraded images written, in input order.
        skipped: inputs that could not be read.
        contact_sheet: the contact sheet, or ``None`` when none was written.
        params_file: the JSON record of seeds, config and ops.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    contact_sheet: Path | None = None
    params_file: Path | None = None


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of the ``index``-th image (sorted relative paths) of a run with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def write_png(path: Path, image: np.ndarray) -> None:
    """Atomically write an ``H x W x 3`` RGB or ``H x W`` gray uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def fit_thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """Fit into a ``size x size`` box keeping the aspect: area to shrink, nearest to enlarge."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    return cv2.resize(image, new, interpolation=interpolation).reshape(new[1], new[0], 3)


def make_contact_sheet(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    thumb_size: int = 160,
    columns: int = 4,
    gap: int = 8,
    background: int = 255,
) -> np.ndarray:
    """Lay out ``(original, degraded)`` pairs side by side, ``columns`` pairs per row.

    Each image is fitted into a ``thumb_size`` box (:func:`fit_thumbnail`) and centred in it; pair
    ``i`` sits in row ``i // columns``, column ``i % columns``, original left, degraded right.

    Returns:
        ``H x W x 3`` uint8 RGB with ``W = c (2 t + g) + (c + 1) g`` and ``H = r t + (r + 1) g``
        for ``c = min(columns, n)`` pair columns, ``r`` rows, thumb size ``t`` and gap ``g``.
    """
    if not pairs:
        raise ValueError("no images for the contact sheet")
    used = min(columns, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    cell = 2 * thumb_size + gap
    sheet = np.full(
        (rows * thumb_size + (rows + 1) * gap, used * cell + (used + 1) * gap, 3), background, np.uint8
    )
    for i, pair in enumerate(pairs):
        top = gap + (i // columns) * (thumb_size + gap)
        left = gap + (i % columns) * (cell + gap)
        for j, image in enumerate(pair):
            thumb = fit_thumbnail(image, thumb_size)
            th, tw = thumb.shape[:2]
            y = top + (thumb_size - th) // 2
            x = left + j * (thumb_size + gap) + (thumb_size - tw) // 2
            sheet[y : y + th, x : x + tw] = thumb
    return sheet


def _plan_outputs(relative: list[Path], output_dir: Path) -> list[tuple[Path, Path]]:
    """Degraded and mask paths per input; name clashes (``a.jpg`` and ``a.png``) get the suffix appended."""
    taken = {output_dir / CONTACT_SHEET, output_dir / PARAMS_FILE}
    plan = []
    for rel in relative:
        stem = rel.stem
        candidate = rel.parent / f"{stem}.png"
        attempt = 0
        while output_dir / candidate in taken or output_dir / MASK_DIR / candidate in taken:
            attempt += 1
            tag = rel.suffix.lstrip(".").lower() + (str(attempt) if attempt > 1 else "")
            candidate = rel.parent / f"{stem}_{tag}.png"
        out, mask = output_dir / candidate, output_dir / MASK_DIR / candidate
        taken.update((out, mask))
        plan.append((out, mask))
    return plan


def degrade_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    seed: int,
    config: DegradationConfig | None = None,
    *,
    recursive: bool = True,
    contact_sheet: bool = True,
    thumb_size: int = 160,
    sheet_columns: int = 4,
    sheet_limit: int = 48,
    progress: bool = True,
) -> DegradeSummary:
    """Write a degraded copy, its defect mask and a contact sheet for every image under ``input_dir``.

    Args:
        input_dir: folder of photos (hidden files and the output folder, if nested, are ignored).
        output_dir: destination; created if needed; must differ from ``input_dir``.
        seed: base seed; image ``i`` (sorted relative paths) uses :func:`image_rng` ``(seed, i)``.
        config: degradation ranges (default :class:`DegradationConfig`, defects on).
        recursive: include sub-folders (mirrored in the output).
        contact_sheet: write ``contact_sheet.png``.
        thumb_size: contact-sheet thumbnail box in pixels.
        sheet_columns: pairs per contact-sheet row.
        sheet_limit: at most this many (first) images on the contact sheet.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`DegradeSummary`. Unreadable files are logged and listed in ``skipped``.

    Raises:
        FileNotFoundError: ``input_dir`` or the configured texture folder does not exist.
        ValueError: ``output_dir`` is ``input_dir`` or a planned output would overwrite an input.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    config = DegradationConfig() if config is None else config
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_dir}")
    if config.texture.directory is not None and not Path(config.texture.directory).is_dir():
        raise FileNotFoundError(f"texture folder not found: {config.texture.directory}")
    check_output_dir(input_dir, output_dir)
    inputs = list_images([input_dir], recursive=recursive)
    if is_inside(output_dir, input_dir):  # an output folder nested in the input tree is never read
        inputs = [p for p in inputs if not is_inside(p, output_dir)]
    relative = sorted((p.relative_to(input_dir) for p in inputs), key=lambda p: p.as_posix())
    plan = _plan_outputs(relative, output_dir)
    check_inputs_untouched([p for pair in plan for p in pair], inputs)

    summary = DegradeSummary()
    if not relative:
        logger.warning("no images found in %s", input_dir)
        return summary
    output_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, object]] = {}
    thumbs: list[tuple[np.ndarray, np.ndarray]] = []
    for index, (rel, (out_path, mask_path)) in enumerate(
        tqdm(list(zip(relative, plan, strict=True)), desc="degrade", unit="img", disable=not progress)
    ):
        source = input_dir / rel
        try:
            image = load_rgb(source)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            logger.warning("skipping unreadable image %s: %s", source, exc)
            summary.skipped.append(source)
            continue
        result = sample_degradation(image, image_rng(seed, index), config)
        write_png(out_path, result.image)
        write_png(mask_path, (result.mask * 255).astype(np.uint8))
        summary.written.append(out_path)
        records[rel.as_posix()] = {
            "index": index,
            "output": out_path.relative_to(output_dir).as_posix(),
            "mask": mask_path.relative_to(output_dir).as_posix(),
            "ops": [[name, params] for name, params in result.params],
        }
        if contact_sheet and len(thumbs) < sheet_limit:
            thumbs.append((fit_thumbnail(image, thumb_size), fit_thumbnail(result.image, thumb_size)))
    if thumbs:
        summary.contact_sheet = output_dir / CONTACT_SHEET
        write_png(summary.contact_sheet, make_contact_sheet(thumbs, thumb_size, sheet_columns))
    summary.params_file = output_dir / PARAMS_FILE
    record = {"seed": int(seed), "config": config_to_dict(config), "images": records}
    write_atomic(summary.params_file, json.dumps(record, indent=1).encode("utf-8"))
    logger.info(
        "degraded %d image(s) into %s (%d skipped)", len(summary.written), output_dir, len(summary.skipped)
    )
    return summary
