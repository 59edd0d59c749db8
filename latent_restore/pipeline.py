"""RestorationPipeline: scratch detection -> global restoration -> faces -> (colorization), in one call.

The pipeline is used alike by the command line, the web page and the tests. Components are
injected (or loaded once from a weights directory by :meth:`RestorationPipeline.from_pretrained`),
stages hand images over in memory, and every photo is restored at its own size: it is padded to
the networks' multiple and cropped back, never resized — unless the ``official`` preset asks for
the released pipeline's behaviour (see ``docs/official-quirks.md``).

The global stage is the two-VAE latent translation by default; ``model=pix2pix`` swaps in the
pix2pix U-Net baseline (Isola et al. 2017) for it. Colorization (off by default) runs last, after
faces, and keeps each photo's lightness.
"""

from __future__ import annotations

import enum
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from latent_restore import official
from latent_restore.core.checkpoint import load_component
from latent_restore.core.colour import MonochromeTone, luma
from latent_restore.core.imaging import Photo, crop_to, pad_to_multiple, photo_from_array, quantize, to_tensor
from latent_restore.core.memory import available_memory
from latent_restore.core.tiling import run_tiled
from latent_restore.weights import Component

logger = logging.getLogger(__name__)

LATENT_MULTIPLE = 4
MIN_NETWORK_SIDE = 16
DETECTOR_SHORT_SIDE = 256
TILE_OVERLAP = 64
MAX_ATTENTION_CELLS = 256 * 256
"""Largest latent (in cells) the non-local block attends over in one piece; beyond it the
quadratic compute (not memory) makes tiles the better choice."""


class Preset(str, enum.Enum):
    DEFAULT = "default"
    OFFICIAL = "official"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"


class RestorationModel(str, enum.Enum):
    """The network of the global stage: the two-VAE latent translation or the pix2pix baseline."""

    TWO_VAE = "two-vae"
    PIX2PIX = "pix2pix"


class WeightsNotFoundError(FileNotFoundError):
    """No usable weights; the message says how to get some."""


@dataclass
class RestorationOptions:
    """What to do with one photo.

    Attributes:
        with_scratch: detect scratches and fill them (partial non-local block or patch attention).
        hr: use the patch-attention mapping for scratched high-resolution photos.
        faces: enhance faces when a face enhancer is available.
        keep_monochrome: gray and sepia photos come out gray and sepia.
        preset: ``default`` or ``official`` (the released pipeline's pre/post-processing).
        return_stages: also return the intermediate images.
        model: the global stage's network; ``pix2pix`` has no scratch, HR or official mode.
        colorize: colorize the result as the last stage (gray photos then come out in colour).
    """

    with_scratch: bool = False
    hr: bool = False
    faces: bool = True
    keep_monochrome: bool = True
    preset: Preset = Preset.DEFAULT
    return_stages: bool = False
    model: RestorationModel = RestorationModel.TWO_VAE
    colorize: bool = False

    def __post_init__(self) -> None:
        self.model = RestorationModel(self.model)
        self.preset = Preset(self.preset)


@dataclass
class RestorationResult:
    """Output of one photo.

    Attributes:
        image: float32 ``H x W x 3`` in [0, 1] (the input size; the rounded size under ``official``).
        alpha: the input's alpha channel, carried through, or None.
        scratch_mask: bool ``H x W`` of detected defects (scratch modes), else None.
        face_boxes: ``(left, top, right, bottom)`` per enhanced face.
        stages: intermediate images by stage name (when asked for).
        path: how the global stage was computed (``full``, ``nonlocal``, ``patch-attention``, ``tiles ...``,
            ``pix2pix``).
    """

    image: np.ndarray
    alpha: np.ndarray | None = None
    scratch_mask: np.ndarray | None = None
    face_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    path: str = "full"


FaceEnhancerFn = Callable[..., tuple[np.ndarray, list[tuple[int, int, int, int]]]]
"""``fn(uint8 H x W x 3, hr=bool, official_detector=bool)`` -> (uint8 image with enhanced faces, boxes)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    return device


def bf16_supported(device: torch.device) -> bool:
    """bfloat16 is fast on CUDA and on CPUs with AVX-512 BF16 or AMX; elsewhere it is emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


class ComponentStore:
    """Loads each component of a weights directory at most once, on first use."""

    def __init__(self, weights_dir: str | os.PathLike[str], device: torch.device, dtype: torch.dtype) -> None:
        self.weights_dir = Path(weights_dir)
        self.device = device
        self.dtype = dtype
        self._loaded: dict[Component, nn.Module] = {}

    def available(self, component: Component) -> bool:
        return component in self._loaded or (self.weights_dir / component.value / "config.json").is_file()

    def get(self, component: Component) -> nn.Module:
        if component not in self._loaded:
            path = self.weights_dir / component.value
            if not (path / "config.json").is_file():
                raise WeightsNotFoundError(f"{self.weights_dir} has no {component.value} component")
            logger.info("loading %s", path)
            model = load_component(path, map_location=self.device).to(self.dtype)
            # Channels-last lets oneDNN/cuDNN convolve without re-laying-out each feature map, which
            # saves one full-size copy per convolution on large photos.
            self._loaded[component] = model.to(memory_format=torch.channels_last)
        return self._loaded[component]


def estimate_global_bytes(height: int, width: int, latent_width: int, attention: bool) -> int:
    """Rough peak memory of one global-restoration pass (activations only), from the networks' sizes.

    Full-resolution VAE features (64 channels, about three live copies), latent-resolution mapping
    features (``latent_width`` channels, about five copies) and, for the non-local block, its
    keys/values/output plus one chunk of scores.
    """
    pixels = height * width
    cells = math.ceil(height / 4) * math.ceil(width / 4)
    total = 3 * 64 * 4 * pixels + 5 * latent_width * 4 * cells
    if attention:
        total += 3 * latent_width * 4 * cells + (512 << 20)
    return int(total * 1.25)


class RestorationPipeline:
    """The whole restoration of one photo.

    Args:
        components: a :class:`ComponentStore` (or any object with ``available``/``get``).
        face_enhancer: callable enhancing faces of a uint8 RGB image, or None to skip faces.
        device: where the networks run.
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        memory_limit: bytes the global stage may use; None = what the device has free.
    """

    def __init__(
        self,
        components: ComponentStore,
        face_enhancer: FaceEnhancerFn | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        memory_limit: int | None = None,
    ) -> None:
        self.components = components
        self.face_enhancer = face_enhancer
        self.device = torch.device(device)
        self.dtype = dtype
        self.memory_limit = memory_limit
        self.stage_callback: Callable[[str], None] | None = None

    @classmethod
    def from_pretrained(
        cls,
        weights_dir: str | os.PathLike[str],
        device: str = "auto",
        precision: Precision | str = Precision.FP32,
        faces: bool = True,
        memory_limit: int | None = None,
    ) -> RestorationPipeline:
        """Build a pipeline over a weights directory (from ``latent-restore convert`` or training)."""
        weights_dir = Path(weights_dir)
        if not (weights_dir / Component.VAE_A.value / "config.json").is_file():
            raise WeightsNotFoundError(
                f"{weights_dir} is not a weights directory (no {Component.VAE_A.value}/config.json). "
                "Make one with `latent-restore convert --official DIR --out WEIGHTS` from the authors' "
                "released checkpoints, or train one with the scripts in scripts/."
            )
        torch_device = resolve_device(device)
        dtype = torch.float32
        if Precision(precision) is Precision.BF16:
            if bf16_supported(torch_device):
                dtype = torch.bfloat16
            else:
                logger.warning("bf16 is not supported natively on %s; running in fp32", torch_device)
        store = ComponentStore(weights_dir, torch_device, dtype)
        face_stage = FaceStage(store)
        if faces and not face_stage.available():
            logger.info("no face components in %s: faces will not be enhanced", weights_dir)
        enhancer = face_stage if faces and face_stage.available() else None
        return cls(store, enhancer, torch_device, dtype, memory_limit)

    def required_components(self, options: RestorationOptions) -> list[Component]:
        """What ``options`` need: the global stage's and colorization's components (faces are optional)."""
        extra = [Component.COLORIZE] if options.colorize else []
        if options.model is RestorationModel.PIX2PIX:
            return [Component.PIX2PIX, *extra]
        if not options.with_scratch:
            return [Component.VAE_A, Component.MAPPING_QUALITY, Component.VAE_B_QUALITY, *extra]
        mapping = Component.MAPPING_HR if options.hr else Component.MAPPING_SCRATCH
        return [Component.SCRATCH_DETECTOR, Component.VAE_A, mapping, Component.VAE_B_SCRATCH, *extra]

    @staticmethod
    def check_options(options: RestorationOptions) -> None:
        """Reject combinations no stage implements.

        Raises:
            ValueError: pix2pix with scratch, HR or the official preset.
        """
        if options.model is RestorationModel.PIX2PIX and (
            options.with_scratch or options.hr or options.preset is Preset.OFFICIAL
        ):
            raise ValueError(
                "--with-scratch, --hr and --preset official need the two-VAE model; "
                "pix2pix restores every defect it was trained on in one pass"
            )

    def check_ready(self, options: RestorationOptions) -> None:
        """Fail before any photo is touched when a needed component is missing.

        Raises:
            ValueError: options that no model implements (see :meth:`check_options`).
            WeightsNotFoundError: naming the missing components.
        """
        self.check_options(options)
        missing = [c.value for c in self.required_components(options) if not self.components.available(c)]
        if missing:
            raise WeightsNotFoundError(
                f"the weights directory lacks {', '.join(missing)}, needed for this mode "
                "(convert the corresponding released checkpoints or train them)"
            )

    def _stage(self, name: str) -> None:
        if self.stage_callback is not None:
            self.stage_callback(name)

    # ----------------------------------------------------------------------------------- global stage

    def _global_forward(
        self, mapping: Component, decoder: Component, x: torch.Tensor, mask: torch.Tensor | None
    ):
        vae_a = self.components.get(Component.VAE_A)
        net = self.components.get(mapping)
        vae_b = self.components.get(decoder)
        padded, size = pad_to_multiple(x, LATENT_MULTIPLE, minimum=MIN_NETWORK_SIDE)
        padded_mask = (
            None if mask is None else pad_to_multiple(mask, LATENT_MULTIPLE, minimum=MIN_NETWORK_SIDE)[0]
        )
        with torch.inference_mode():
            z = vae_a.encode(padded.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last))
            m = None if padded_mask is None else padded_mask.to(self.device, self.dtype)
            out = vae_b.decode(net(z, m))
        return crop_to(out.to(torch.float32).cpu(), size)

    def _plan(self, height: int, width: int, mapping: Component) -> tuple[str, int | None]:
        """Choose how to compute the global stage: in one piece, or tiles of what side."""
        config = self.components.get(mapping).config
        latent_width = config.widths()[-1]
        attention = mapping is Component.MAPPING_SCRATCH
        budget = (
            self.memory_limit if self.memory_limit is not None else int(available_memory(self.device) * 0.8)
        )
        cells = math.ceil(height / 4) * math.ceil(width / 4)
        fits = estimate_global_bytes(height, width, latent_width, attention) <= budget
        if fits and not (attention and cells > MAX_ATTENTION_CELLS):
            return (
                {Component.MAPPING_SCRATCH: "nonlocal", Component.MAPPING_HR: "patch-attention"}.get(
                    mapping, "full"
                ),
                None,
            )
        tile = 4 * int(math.sqrt(MAX_ATTENTION_CELLS)) if attention else 2048
        while tile > 256 and estimate_global_bytes(tile, tile, latent_width, attention) > budget:
            tile //= 2
        if estimate_global_bytes(tile, tile, latent_width, attention) > budget:
            raise MemoryError(f"not even a {tile}x{tile} tile fits in the {budget / 2**30:.1f} GiB available")
        return f"tiles {tile}x{tile}", tile

    def restore_global(
        self, rgb: np.ndarray, mask: np.ndarray | None, hr: bool = False
    ) -> tuple[np.ndarray, str]:
        """Global restoration of float RGB ``H x W x 3`` in [0, 1] at its own size.

        Args:
            rgb: the photo.
            mask: bool/0-1 ``H x W`` defect mask (scratch modes) or None (quality mode).
            hr: with a mask, use the patch-attention mapping (and the released 7x7 mask dilation).

        Returns:
            The restored photo (float ``H x W x 3``) and the computation path taken.
        """
        if mask is None:
            mapping, decoder = Component.MAPPING_QUALITY, Component.VAE_B_QUALITY
            m = None
        else:
            mapping = Component.MAPPING_HR if hr else Component.MAPPING_SCRATCH
            decoder = Component.VAE_B_SCRATCH
            mask_u8 = (np.asarray(mask) > 0).astype(np.uint8) * 255
            if hr:
                mask_u8 = official.dilate_mask(mask_u8)
            m = torch.from_numpy(mask_u8.astype(np.float32) / 255.0)[None, None]
            rgb = rgb * (1.0 - m[0, 0].numpy()[..., None]) + m[0, 0].numpy()[..., None]
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None] * 2.0 - 1.0
        path, tile = self._plan(x.shape[-2], x.shape[-1], mapping)
        logger.info("global restoration: %s (%dx%d)", path, x.shape[-1], x.shape[-2])

        def forward(piece: torch.Tensor, piece_mask: torch.Tensor | None) -> torch.Tensor:
            return self._global_forward(mapping, decoder, piece, piece_mask)

        out = forward(x, m) if tile is None else run_tiled(forward, x, m, tile, TILE_OVERLAP)
        return ((out[0].permute(1, 2, 0).numpy() + 1.0) / 2.0).clip(0, 1), path

    def restore_pix2pix(self, rgb: np.ndarray) -> tuple[np.ndarray, str]:
        """Global restoration of float RGB ``H x W x 3`` in [0, 1] by the pix2pix U-Net, at its own size.

        Returns:
            The restored photo (float ``H x W x 3``) and the computation path (``pix2pix``).
        """
        from pix2pix.inference import translate

        generator = self.components.get(Component.PIX2PIX)
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None] * 2.0 - 1.0
        logger.info("global restoration: pix2pix (%dx%d)", x.shape[-1], x.shape[-2])
        out = translate(generator, x)
        return ((out[0].permute(1, 2, 0).numpy() + 1.0) / 2.0).clip(0, 1), "pix2pix"

    def colorize(self, rgb: np.ndarray) -> np.ndarray:
        """Colorize float RGB ``H x W x 3`` in [0, 1]: its CIE L is kept, the chroma predicted."""
        from colorize.inference import colorize

        return colorize(self.components.get(Component.COLORIZE), rgb)

    # ----------------------------------------------------------------------------------- scratches

    def detect_scratches(
        self, rgb: np.ndarray, threshold: float = official.DETECTION_THRESHOLD
    ) -> np.ndarray:
        """Defect mask (bool ``H x W``) of float RGB ``H x W x 3``.

        The detector runs at the scale it was trained for (short side 256, antialiased), padded to
        its multiple; the probabilities — not the thresholded mask — are upsampled bilinearly, so
        large photos get smooth masks instead of the released pipeline's blocky ones.
        """
        detector = self.components.get(Component.SCRATCH_DETECTOR)
        h, w = rgb.shape[:2]
        gray = torch.from_numpy(np.ascontiguousarray(luma(rgb), dtype=np.float32))[None, None] * 2.0 - 1.0
        scale = DETECTOR_SHORT_SIDE / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = F.interpolate(gray, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        padded, small_size = pad_to_multiple(small, detector.config.multiple)
        with torch.inference_mode():
            logits = detector(padded.to(self.device, self.dtype)).to(torch.float32).cpu()
        prob = torch.sigmoid(crop_to(logits, small_size))
        prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        return (prob[0, 0] >= threshold).numpy()

    # ----------------------------------------------------------------------------------- one photo

    def __call__(
        self, photo: Photo | np.ndarray | Image.Image, options: RestorationOptions | None = None
    ) -> RestorationResult:
        """Restore one photo."""
        options = options or RestorationOptions()
        self.check_options(options)
        if not isinstance(photo, Photo):
            photo = photo_from_array(photo)
        if options.preset is Preset.OFFICIAL:
            return self._official(photo, options)
        stages: dict[str, np.ndarray] = {}
        tone = MonochromeTone.fit(photo.rgb) if options.keep_monochrome else None
        mask = None
        if options.with_scratch:
            self._stage("scratch detection")
            mask = self.detect_scratches(photo.rgb)
            if options.return_stages:
                stages["scratch_mask"] = mask.astype(np.uint8) * 255
        self._stage("global restoration")
        if options.model is RestorationModel.PIX2PIX:
            restored, path = self.restore_pix2pix(photo.rgb)
        else:
            restored, path = self.restore_global(photo.rgb, mask, options.hr)
        if tone is not None:
            restored = tone.apply(restored)
        if options.return_stages:
            stages["global"] = quantize(restored)
        boxes: list[tuple[int, int, int, int]] = []
        if options.faces and self.face_enhancer is not None:
            self._stage("faces")
            enhanced, boxes = self.face_enhancer(quantize(restored), hr=options.hr)
            if boxes:
                restored = enhanced.astype(np.float32) / 255.0
                if tone is not None:
                    restored = tone.apply(restored)
            if options.return_stages:
                stages["faces"] = quantize(restored)
        if options.colorize:
            # Last, and after the monochrome tone was re-applied: nothing turns the colours back to gray.
            self._stage("colorization")
            restored = self.colorize(restored)
            if options.return_stages:
                stages["colorize"] = quantize(restored)
        return RestorationResult(restored, photo.alpha, mask, boxes, stages, path)

    def _official(self, photo: Photo, options: RestorationOptions) -> RestorationResult:
        """The released pipeline's pre/post-processing around the same networks (spec §2–§7)."""
        image = Image.fromarray(quantize(photo.rgb))
        stages: dict[str, np.ndarray] = {}
        mask = None
        if options.with_scratch:
            self._stage("scratch detection")
            detection = official.detect_scratches(self.components.get(Component.SCRATCH_DETECTOR), image)
            prepared = official.prepare_scratch_input(
                detection.full_size_image, detection.saved_mask[..., 0], hr=options.hr
            )
            mask = prepared.mask[0, 0].numpy() > 0
            mapping = Component.MAPPING_HR if options.hr else Component.MAPPING_SCRATCH
            self._stage("global restoration")
            out = self._global_forward(mapping, Component.VAE_B_SCRATCH, prepared.image, prepared.mask)
            if options.return_stages:
                stages["scratch_mask"] = detection.saved_mask[..., 0]
        else:
            self._stage("global restoration")
            resized = np.asarray(official.resize_full_mode(image))
            out = self._global_forward(
                Component.MAPPING_QUALITY, Component.VAE_B_QUALITY, to_tensor(resized), None
            )
        restored = official.saved_restoration(out)
        if options.return_stages:
            stages["global"] = restored
        boxes: list[tuple[int, int, int, int]] = []
        if options.faces and self.face_enhancer is not None:
            self._stage("faces")
            restored, boxes = self.face_enhancer(restored, hr=options.hr, official_detector=True)
        if options.colorize:
            self._stage("colorization")
            restored = self.colorize(restored)
            if options.return_stages:
                stages["colorize"] = restored
        return RestorationResult(restored.astype(np.float32) / 255.0, None, mask, boxes, stages, "official")


def pix2pix_method(pipeline: RestorationPipeline) -> Callable[[np.ndarray], np.ndarray] | None:
    """The pix2pix baseline as an evaluation method (uint8 ``H x W x 3`` in and out), or None without weights.

    It restores from the degraded photo alone (no scratch mask, no faces), whatever the protocol.
    """
    if not pipeline.components.available(Component.PIX2PIX):
        return None
    options = RestorationOptions(faces=False, model=RestorationModel.PIX2PIX)
    return lambda image: quantize(pipeline(image, options).image)


class FaceStage:
    """Face enhancement over a component store, built on first use.

    The 512 generator serves ``--hr`` (as in the released pipeline, which uses ``FaceSR_512``
    there), the 256 one everything else; the ``official`` preset uses the released detector
    settings (no upsampling), the default finds smaller faces.
    """

    def __init__(self, store: ComponentStore) -> None:
        self.store = store
        self._enhancers: dict[tuple[Component, bool], object] = {}

    def available(self) -> bool:
        return self.store.available(Component.FACE_256) or self.store.available(Component.FACE_512)

    def __call__(
        self, image: np.ndarray, hr: bool = False, official_detector: bool = False
    ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        from face_enhance.detection import OFFICIAL_DETECTOR, DetectorConfig
        from face_enhance.enhancer import FaceEnhancer, FaceEnhancerConfig

        preferred = (
            [Component.FACE_512, Component.FACE_256] if hr else [Component.FACE_256, Component.FACE_512]
        )
        component = next(c for c in preferred if self.store.available(c))
        key = (component, official_detector)
        if key not in self._enhancers:
            detector = OFFICIAL_DETECTOR if official_detector else DetectorConfig()
            batch = 1 if component is Component.FACE_512 else 4
            config = FaceEnhancerConfig(detector=detector, batch_size=batch)
            self._enhancers[key] = FaceEnhancer(self.store.get(component), config)
        result = self._enhancers[key](image)
        return result.image, [tuple(int(v) for v in box) for box in result.boxes]
