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

import dataclasses
import enum
import hashlib
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
from latent_restore.core.tiling import run_tiled, tile_starts
from latent_restore.weights import Component

logger = logging.getLogger(__name__)

MIN_NETWORK_SIDE = 16
DETECTOR_SHORT_SIDE = 256
TILE_OVERLAP = 64
ATTENTION_SHARE = 0.4
"""With ``scratch_context=tiled``, the partial non-local block may cost at most this fraction of
the convolutions' work: with detection and tile overlaps a scratched photo then costs about 1.5x
its quality-mode time, whatever its size (whole-photo attention grows with the square of the
pixel count)."""
MIN_CONTEXT_TILE = 256
"""Smallest tile side (pixels) the time plan cuts a scratched photo into: below it the attention
would see too little undamaged context to fill a scratch from."""
PROBE_SIDE = 64
"""Side of the probe image whose convolution work (counted by hooks) gives each path's cost per pixel."""


class Preset(str, enum.Enum):
    DEFAULT = "default"
    OFFICIAL = "official"


class ScratchContext(str, enum.Enum):
    """How much of a scratched photo the partial non-local block attends over.

    ``tiled`` bounds the attention's quadratic work by tiles (see :data:`ATTENTION_SHARE`);
    ``global`` attends over the whole photo in one piece whenever memory allows (the released
    behaviour, slow on large photos).
    """

    TILED = "tiled"
    GLOBAL = "global"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"


class RestorationModel(str, enum.Enum):
    """The network of the global stage: the two-VAE latent translation or the pix2pix baseline."""

    TWO_VAE = "two-vae"
    PIX2PIX = "pix2pix"


class WeightsNotFoundError(FileNotFoundError):
    """No usable weights; the message says how to get some."""


class IncompatibleWeightsError(ValueError):
    """Components of one weights set that cannot work together (latent channels, downsampling)."""


class DeviceNotAvailableError(ValueError):
    """The asked-for device does not exist on this machine."""


BYTES_PER_PIXEL = 96
"""What the whole-photo arrays of one restoration cost per pixel (float32 input, tensor, padded
copy, blended tile accumulator, output, tone-mapped copy, quantised and encoded results), on top of
the tile working set the memory planner bounds; measured peak on a 12 MP photo: see README."""


def default_max_pixels(device: torch.device | None = None) -> int:
    """The largest photo (in pixels) a run accepts by default: half the free memory at ``BYTES_PER_PIXEL``.

    A larger photo is refused from its header, before decoding, instead of driving the machine
    into swap; ``--max-pixels`` overrides it.
    """
    return max(1 << 20, int(available_memory(device or torch.device("cpu")) * 0.5) // BYTES_PER_PIXEL)


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
        face_size: 256 or 512, the face generator to use when both are present; None = 256, or
            512 under the ``official`` preset with ``hr`` (what the released pipeline does).
        scratch_context: ``tiled`` (bounded time) or ``global`` attention in scratch mode.
    """

    with_scratch: bool = False
    hr: bool = False
    faces: bool = True
    keep_monochrome: bool = True
    preset: Preset = Preset.DEFAULT
    return_stages: bool = False
    model: RestorationModel = RestorationModel.TWO_VAE
    colorize: bool = False
    face_size: int | None = None
    scratch_context: ScratchContext = ScratchContext.TILED

    def __post_init__(self) -> None:
        self.model = RestorationModel(self.model)
        self.preset = Preset(self.preset)
        self.scratch_context = ScratchContext(self.scratch_context)
        if self.face_size not in (None, 256, 512):
            raise ValueError(f"face_size must be 256 or 512, got {self.face_size}")

    def resolved_face_size(self) -> int:
        """The face generator side these options prefer."""
        if self.face_size is not None:
            return self.face_size
        return 512 if self.preset is Preset.OFFICIAL and self.hr and self.with_scratch else 256

    def ignored_flags(self) -> list[str]:
        """Flags that have no effect with the others (to say so instead of silently ignoring them)."""
        notes = []
        if self.hr and not self.with_scratch:
            notes.append(
                "--hr selects the patch-attention mapping of scratch mode: it has no effect without "
                "--with-scratch"
            )
        if self.face_size is not None and not self.faces:
            notes.append("--face-size has no effect with --no-faces")
        return notes


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
"""``fn(uint8 H x W x 3, size=256|512, official_detector=bool)`` -> (uint8 image, face boxes)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceNotAvailableError(
            f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceNotAvailableError(f"--device {name}: this machine has no CUDA device (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceNotAvailableError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise DeviceNotAvailableError(f"--device {name}: Apple MPS is not available on this machine")
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
        self._identities: dict[Component, str] = {}

    def available(self, component: Component) -> bool:
        return component in self._loaded or (self.weights_dir / component.value / "config.json").is_file()

    def identity(self, component: Component) -> str:
        """SHA-256 of the component's files: what a restored photo's record names its weights by."""
        if component not in self._identities:
            digest = hashlib.sha256()
            for name in ("config.json", "model.safetensors"):
                path = self.weights_dir / component.value / name
                digest.update(name.encode())
                with open(path, "rb") as handle:
                    for block in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(block)
            self._identities[component] = digest.hexdigest()
        return self._identities[component]

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


def estimate_global_bytes(
    height: int,
    width: int,
    latent_width: int,
    attention: bool,
    multiple: int = 4,
    image_width: int = 64,
) -> int:
    """Rough peak memory of one global-restoration pass (activations only), from the networks' sizes.

    Full-resolution VAE features (``image_width`` channels, about three live copies),
    latent-resolution mapping features (``latent_width`` channels at ``1 / multiple`` of the
    sides, about five copies) and, for the non-local block, its keys/values/output plus one chunk
    of scores.
    """
    pixels = height * width
    cells = math.ceil(height / multiple) * math.ceil(width / multiple)
    total = 3 * image_width * 4 * pixels + 5 * latent_width * 4 * cells
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
        max_pixels: photos above this many pixels are refused before decoding (batch runs and the
            web page read it); None = :func:`default_max_pixels`.
    """

    def __init__(
        self,
        components: ComponentStore,
        face_enhancer: FaceEnhancerFn | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        memory_limit: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.components = components
        self.face_enhancer = face_enhancer
        self.device = torch.device(device)
        self.dtype = dtype
        self.memory_limit = memory_limit
        self.max_pixels = max_pixels if max_pixels is not None else default_max_pixels(self.device)
        self.stage_callback: Callable[[str], None] | None = None
        self._conv_macs: dict[tuple[Component, Component], float] = {}
        # Called with (done, total) after each tile of the global stage (the web page cancels there).
        self.tile_callback: Callable[[int, int], None] | None = None

    @classmethod
    def from_pretrained(
        cls,
        weights_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: Precision | str = Precision.FP32,
        faces: bool = True,
        memory_limit: int | None = None,
        max_pixels: int | None = None,
    ) -> RestorationPipeline:
        """Build a pipeline over a weights directory (from ``latent-restore convert`` or training).

        ``weights_dir=None`` picks the set as the command line does
        (:func:`latent_restore.weights.resolve_weights`: ``$LATENT_RESTORE_WEIGHTS``, the downloaded
        official weights, the built-in ones).
        """
        if weights_dir is None:
            from latent_restore.weights import resolve_weights

            resolved = resolve_weights()
            if resolved is None:
                raise WeightsNotFoundError(
                    "no weights: nothing downloaded and no built-in weights; run `latent-restore download`"
                )
            weights_dir = resolved.path
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
        return cls(store, enhancer, torch_device, dtype, memory_limit, max_pixels)

    def required_components(self, options: RestorationOptions) -> list[Component]:
        """What ``options`` need: the global stage's and colorization's components (faces are optional)."""
        extra = [Component.COLORIZE] if options.colorize else []
        if options.model is RestorationModel.PIX2PIX:
            return [Component.PIX2PIX, *extra]
        mapping, decoder = self._global_components(options.with_scratch, options.hr)
        detector = [Component.SCRATCH_DETECTOR] if options.with_scratch else []
        return [*detector, Component.VAE_A, mapping, decoder, *extra]

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
        required = self.required_components(options)
        missing = [c.value for c in required if not self.components.available(c)]
        if missing:
            raise WeightsNotFoundError(
                f"the weights directory lacks {', '.join(missing)}, needed for this mode "
                "(convert the corresponding released checkpoints or train them)"
            )
        for component in required:  # a damaged component fails here, once, not on every photo
            self.components.get(component)
        if options.model is RestorationModel.TWO_VAE:
            mapping, decoder = self._global_components(options.with_scratch, options.hr)
            self._check_fit(Component.VAE_A, mapping, decoder)

    def _check_fit(self, vae_a: Component, mapping: Component, vae_b: Component) -> None:
        """The encoder, mapping and decoder must agree on latent channels and downsampling.

        Raises:
            IncompatibleWeightsError: naming the two components that disagree.
        """
        encoder = self.components.get(vae_a).config
        translator = self.components.get(mapping).config
        decoder = self.components.get(vae_b).config
        pairs = [
            (vae_a, "latent channels", encoder.latent_channels, mapping, translator.latent_channels),
            (mapping, "latent channels", translator.latent_channels, vae_b, decoder.latent_channels),
            (vae_a, "downsamplings", encoder.num_downsamples, vae_b, decoder.num_downsamples),
        ]
        for first, what, a, second, b in pairs:
            if a != b:
                raise IncompatibleWeightsError(
                    f"{first.value} and {second.value} do not fit together: {what} {a} vs {b} "
                    "(components from different weight sets?)"
                )

    def record(self, options: RestorationOptions) -> dict:
        """What a restored photo was made with: options, precision and the weights' identities.

        A folder rerun compares it with the record stored in an existing output and redoes the
        photo when they differ.
        """
        components = list(self.required_components(options))
        face = self._face_component(options)
        if face is not None:
            components.append(face)
        identity = getattr(self.components, "identity", None)
        weights = {c.value: identity(c) if identity else "" for c in components}
        fields = dataclasses.asdict(options)
        fields.pop("return_stages")
        fields = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in fields.items()}
        fields["face_size"] = options.resolved_face_size()
        return {"options": fields, "dtype": str(self.dtype).removeprefix("torch."), "weights": weights}

    def _face_component(self, options: RestorationOptions) -> Component | None:
        if not options.faces or self.face_enhancer is None:
            return None
        choose = getattr(self.face_enhancer, "component", None)
        return choose(options.resolved_face_size()) if choose else None

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
        multiple = self._latent_multiple()
        padded, size = pad_to_multiple(x, multiple, minimum=MIN_NETWORK_SIDE)
        padded_mask = None if mask is None else pad_to_multiple(mask, multiple, minimum=MIN_NETWORK_SIDE)[0]
        with torch.inference_mode():
            z = vae_a.encode(padded.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last))
            m = None if padded_mask is None else padded_mask.to(self.device, self.dtype)
            out = vae_b.decode(net(z, m))
        if out.shape[-2:] != padded.shape[-2:]:
            raise IncompatibleWeightsError(
                f"the global stage returned {out.shape[-1]}x{out.shape[-2]} for a "
                f"{padded.shape[-1]}x{padded.shape[-2]} input: {Component.VAE_A.value}, {mapping.value} and "
                f"{decoder.value} do not fit together"
            )
        return crop_to(out.to(torch.float32).cpu(), size)

    def _latent_multiple(self) -> int:
        """The side multiple the global stage needs, asked of the encoder (``2 ** num_downsamples``)."""
        return self.components.get(Component.VAE_A).config.multiple

    @staticmethod
    def _global_components(with_scratch: bool, hr: bool) -> tuple[Component, Component]:
        """``(mapping, decoder)`` of the two-VAE global stage in a mode."""
        if not with_scratch:
            return Component.MAPPING_QUALITY, Component.VAE_B_QUALITY
        return (Component.MAPPING_HR if hr else Component.MAPPING_SCRATCH), Component.VAE_B_SCRATCH

    def _conv_macs_per_pixel(self, mapping: Component, decoder: Component) -> float:
        """Multiply-accumulates of the path's convolutions per photo pixel, counted once by hooks on a
        probe image (the networks' sizes, not assumptions about them)."""
        key = (mapping, decoder)
        if key not in self._conv_macs:
            count = [0]

            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
                # Conv2d: every output value sums Cin/g * kh * kw products (weight[0]); a transposed
                # convolution spreads every input value over Cout/g * kh * kw outputs (its weight[0]).
                spread = inputs[0] if isinstance(module, nn.ConvTranspose2d) else output
                count[0] += spread.numel() * module.weight[0].numel()

            modules = [self.components.get(c) for c in (Component.VAE_A, mapping, decoder)]
            handles = [
                m.register_forward_hook(hook)
                for net in modules
                for m in net.modules()
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
            ]
            try:
                probe = torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE)
                mask = (
                    torch.zeros(1, 1, PROBE_SIDE, PROBE_SIDE)
                    if mapping is not Component.MAPPING_QUALITY
                    else None
                )
                self._global_forward(mapping, decoder, probe, mask)
            finally:
                for handle in handles:
                    handle.remove()
            self._conv_macs[key] = count[0] / PROBE_SIDE**2
        return self._conv_macs[key]

    def _plan(
        self,
        height: int,
        width: int,
        mapping: Component,
        decoder: Component,
        context: ScratchContext = ScratchContext.TILED,
    ) -> tuple[str, int | None]:
        """Choose how to compute the global stage: in one piece, or tiles of what side.

        Memory first: the estimate of :func:`estimate_global_bytes` must fit the budget. Then time,
        for the partial non-local block under ``tiled`` context: its work (``2 C N^2`` for ``N``
        latent cells attended together) may be at most :data:`ATTENTION_SHARE` of the
        convolutions' work, which bounds the tile side at ``m^2 sqrt(share * macs_per_pixel / 2C)``.
        """
        config = self.components.get(mapping).config
        latent_width = config.widths()[-1]
        encoder = self.components.get(Component.VAE_A).config
        multiple, image_width = encoder.multiple, encoder.stage_channels()[0]
        attention = mapping is Component.MAPPING_SCRATCH
        budget = (
            self.memory_limit if self.memory_limit is not None else int(available_memory(self.device) * 0.8)
        )

        def estimate(h: int, w: int) -> int:
            return estimate_global_bytes(h, w, latent_width, attention, multiple, image_width)

        time_tile = None
        if attention and context is ScratchContext.TILED:
            macs_per_pixel = self._conv_macs_per_pixel(mapping, decoder)
            cells = math.ceil(height / multiple) * math.ceil(width / multiple)
            attention_macs = 2 * latent_width * cells**2
            conv_macs = macs_per_pixel * height * width
            if attention_macs > ATTENTION_SHARE * conv_macs:
                side = multiple**2 * math.sqrt(ATTENTION_SHARE * macs_per_pixel / (2 * latent_width))
                time_tile = max(MIN_CONTEXT_TILE, int(side) // multiple * multiple)
                # Tiles pay their overlaps twice and at least MIN_CONTEXT_TILE each: on a photo
                # only a little larger than a tile, one piece can still be cheaper.
                tiles = len(tile_starts(height, time_tile, TILE_OVERLAP)) * len(
                    tile_starts(width, time_tile, TILE_OVERLAP)
                )
                tile_cells = (time_tile // multiple) ** 2
                tiled_macs = tiles * (2 * latent_width * tile_cells**2 + macs_per_pixel * time_tile**2)
                if tiled_macs >= attention_macs + conv_macs:
                    time_tile = None
        if estimate(height, width) <= budget and (time_tile is None or max(height, width) <= time_tile):
            return (
                {Component.MAPPING_SCRATCH: "nonlocal", Component.MAPPING_HR: "patch-attention"}.get(
                    mapping, "full"
                ),
                None,
            )
        tile = time_tile if time_tile is not None else 2048
        while tile > MIN_CONTEXT_TILE and estimate(tile, tile) > budget:
            tile = max(MIN_CONTEXT_TILE, tile // 2 // multiple * multiple)
        if time_tile is not None:
            logger.info(
                "scratch context: whole-photo attention would cost %.1f GMAC against %.1f GMAC of "
                "convolutions; attending within %d px tiles instead (--scratch-context global keeps it)",
                attention_macs / 1e9,
                conv_macs / 1e9,
                tile,
            )
        if estimate(tile, tile) > budget:
            raise MemoryError(f"not even a {tile}x{tile} tile fits in the {budget / 2**30:.1f} GiB available")
        return f"tiles {tile}x{tile}", tile

    def restore_global(
        self,
        rgb: np.ndarray,
        mask: np.ndarray | None,
        hr: bool = False,
        context: ScratchContext = ScratchContext.TILED,
    ) -> tuple[np.ndarray, str]:
        """Global restoration of float RGB ``H x W x 3`` in [0, 1] at its own size.

        Args:
            rgb: the photo.
            mask: bool/0-1 ``H x W`` defect mask (scratch modes) or None (quality mode).
            hr: with a mask, use the patch-attention mapping (and the released 7x7 mask dilation).
            context: how far the partial non-local block attends (see :class:`ScratchContext`).

        Returns:
            The restored photo (float ``H x W x 3``) and the computation path taken.
        """
        mapping, decoder = self._global_components(mask is not None, hr)
        if mask is None:
            m = None
        else:
            mask_u8 = (np.asarray(mask) > 0).astype(np.uint8) * 255
            if hr:
                mask_u8 = official.dilate_mask(mask_u8)
            m = torch.from_numpy(mask_u8.astype(np.float32) / 255.0)[None, None]
            rgb = rgb * (1.0 - m[0, 0].numpy()[..., None]) + m[0, 0].numpy()[..., None]
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None] * 2.0 - 1.0
        path, tile = self._plan(x.shape[-2], x.shape[-1], mapping, decoder, context)
        logger.info("global restoration: %s (%dx%d)", path, x.shape[-1], x.shape[-2])

        def forward(piece: torch.Tensor, piece_mask: torch.Tensor | None) -> torch.Tensor:
            return self._global_forward(mapping, decoder, piece, piece_mask)

        if tile is None:
            out = forward(x, m)
        else:
            out = run_tiled(forward, x, m, tile, TILE_OVERLAP, self.tile_callback)
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
            restored, path = self.restore_global(photo.rgb, mask, options.hr, options.scratch_context)
        _check_finite(restored, "global restoration")
        if restored.shape[:2] != photo.size:
            raise IncompatibleWeightsError(
                f"the global stage returned {restored.shape[1]}x{restored.shape[0]} for a "
                f"{photo.size[1]}x{photo.size[0]} photo"
            )
        if tone is not None:
            restored = tone.apply(restored)
        if options.return_stages:
            stages["global"] = quantize(restored)
        boxes: list[tuple[int, int, int, int]] = []
        if options.faces and self.face_enhancer is not None:
            self._stage("faces")
            enhanced, boxes = self.face_enhancer(quantize(restored), size=options.resolved_face_size())
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
            _check_finite(restored, "colorization")
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
        _check_finite(out.numpy(), "global restoration")
        restored = official.saved_restoration(out)
        if options.return_stages:
            stages["global"] = restored
        boxes: list[tuple[int, int, int, int]] = []
        if options.faces and self.face_enhancer is not None:
            self._stage("faces")
            restored, boxes = self.face_enhancer(
                restored, size=options.resolved_face_size(), official_detector=True
            )
        if options.colorize:
            self._stage("colorization")
            restored = self.colorize(restored)
            if options.return_stages:
                stages["colorize"] = restored
        return RestorationResult(restored.astype(np.float32) / 255.0, None, mask, boxes, stages, "official")


class NonFiniteOutputError(ArithmeticError):
    """A network produced NaN or infinite values; the photo fails instead of coming out black."""


def _check_finite(values: np.ndarray, stage: str) -> None:
    if not np.isfinite(values).all():
        raise NonFiniteOutputError(
            f"{stage} produced non-finite values (NaN/Inf): the weights may be damaged or the "
            "precision too low for them; try --precision fp32 or other weights"
        )


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

    ``size`` picks the 256 or 512 generator (:meth:`RestorationOptions.resolved_face_size`); when
    only the other one is present it is used. The ``official`` preset uses the released detector
    settings (no upsampling), the default finds smaller faces.
    """

    def __init__(self, store: ComponentStore) -> None:
        self.store = store
        self._enhancers: dict[tuple[Component, bool], object] = {}

    def available(self) -> bool:
        return self.store.available(Component.FACE_256) or self.store.available(Component.FACE_512)

    def component(self, size: int = 256) -> Component:
        """The face component serving ``size`` (the other size when only that one is present)."""
        preferred = (
            [Component.FACE_512, Component.FACE_256]
            if size == 512
            else [Component.FACE_256, Component.FACE_512]
        )
        return next(c for c in preferred if self.store.available(c))

    def __call__(
        self, image: np.ndarray, size: int = 256, official_detector: bool = False
    ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        from face_enhance.detection import OFFICIAL_DETECTOR, DetectorConfig
        from face_enhance.enhancer import FaceEnhancer, FaceEnhancerConfig

        component = self.component(size)
        key = (component, official_detector)
        if key not in self._enhancers:
            detector = OFFICIAL_DETECTOR if official_detector else DetectorConfig()
            batch = 1 if component is Component.FACE_512 else 4
            config = FaceEnhancerConfig(detector=detector, batch_size=batch)
            self._enhancers[key] = FaceEnhancer(self.store.get(component), config)
        result = self._enhancers[key](image)
        return result.image, [tuple(int(v) for v in box) for box in result.boxes]
