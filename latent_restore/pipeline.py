"""RestorationPipeline: scratch detection -> global restoration -> faces -> (colorization), in one call.

The pipeline is used alike by the command line, the web page and the tests. Components are
injected (or loaded once from a weights directory by :meth:`RestorationPipeline.from_pretrained`),
stages hand images over in memory, and every photo is restored at its own size: it is padded to
the networks' multiple and cropped back, never resized — unless the ``official`` preset asks for
the released pipeline's behaviour (see ``docs/official-quirks.md``).

The global stage is the two-VAE latent translation by default; ``model=pix2pix`` swaps in the
pix2pix U-Net baseline (Isola et al. 2017) for it. Colorization (off by default) runs last, after
faces, and keeps each photo's lightness.

Around it: :mod:`latent_restore.options` (what to do, what comes back), :mod:`latent_restore.planning`
(whole photo or tiles), :mod:`latent_restore.stores` (loading components, the face stage) and
:mod:`latent_restore.devices` (device and precision).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latent_restore.core.colour import MonochromeTone, luma
from latent_restore.core.device import DeviceNotAvailableError, Precision, resolve_device
from latent_restore.core.imaging import (
    Photo,
    crop_to,
    dilate_holes,
    fill_holes,
    mask_to_tensor,
    pad_to_multiple,
    photo_array,
    photo_from_array,
    photo_tensor,
    quantize,
)
from latent_restore.core.tiling import run_tiled
from latent_restore.devices import bf16_supported, inference_dtype
from latent_restore.official_preset import restore_official
from latent_restore.options import (
    FaceEnhancerFn,
    IncompatibleWeightsError,
    Mode,
    NonFiniteOutputError,
    Preset,
    Progress,
    RestorationModel,
    RestorationOptions,
    RestorationResult,
    ScratchContext,
    Stage,
    WeightsNotFoundError,
    check_finite_output,
)
from latent_restore.planning import (
    BYTES_PER_PIXEL,
    PROBE_SIDE,
    TILE_OVERLAP,
    ConvWork,
    GlobalPlan,
    NetworkShape,
    count_conv_macs,
    default_max_pixels,
    default_memory_budget,
    estimate_global_bytes,
    plan_global,
)
from latent_restore.stores import ComponentStore, FaceStage
from latent_restore.weights import Component
from stage2_mapping.nonlocal_block import PartialNonLocalBlock

__all__ = [
    "BYTES_PER_PIXEL",
    "TILE_OVERLAP",
    "ComponentStore",
    "DeviceNotAvailableError",
    "FaceEnhancerFn",
    "FaceStage",
    "IncompatibleWeightsError",
    "Mode",
    "NonFiniteOutputError",
    "Precision",
    "Preset",
    "Progress",
    "RestorationModel",
    "RestorationOptions",
    "RestorationPipeline",
    "RestorationResult",
    "ScratchContext",
    "Stage",
    "WeightsNotFoundError",
    "bf16_supported",
    "default_max_pixels",
    "estimate_global_bytes",
    "pix2pix_method",
    "resolve_device",
]
"""Re-exported from where they live (:mod:`.options`, :mod:`.planning`, :mod:`.stores`, :mod:`.devices`,
:mod:`latent_restore.core.device`)."""

logger = logging.getLogger(__name__)

MIN_NETWORK_SIDE = 16
DETECTOR_SHORT_SIDE = 256


def scratch_probability(
    detector: torch.nn.Module,
    rgb: np.ndarray,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Defect probability (float32 ``H x W``) of float RGB ``H x W x 3`` by the scratch detector.

    The detector sees the photo's luma or its RGB, as many channels as it asks for, at the scale it
    was trained for (short side :data:`DETECTOR_SHORT_SIDE`, antialiased), padded to its
    multiple; the probabilities — not a thresholded mask — are upsampled bilinearly, so large
    photos get smooth masks instead of the released pipeline's blocky ones. The pipeline and the
    threshold calibration both threshold this map.
    """
    h, w = rgb.shape[:2]
    photo = rgb if detector.config.in_channels == 3 else luma(rgb)[..., None]
    x = torch.from_numpy(np.ascontiguousarray(photo, dtype=np.float32)).permute(2, 0, 1)[None] * 2.0 - 1.0
    scale = DETECTOR_SHORT_SIDE / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    padded, small_size = pad_to_multiple(small, detector.config.multiple)
    with torch.inference_mode():
        logits = detector(padded.to(device, dtype)).to(torch.float32).cpu()
    prob = torch.sigmoid(crop_to(logits, small_size))
    return F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


class RestorationPipeline:
    """The whole restoration of one photo.

    Args:
        components: a :class:`ComponentStore` (or any object with ``available``/``get``).
        face_enhancer: callable enhancing faces of a uint8 RGB image, or None to skip faces.
        device: where the networks run.
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        memory_limit: bytes the global stage may use; None = :func:`default_memory_budget`.
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
        self._conv_macs: dict[tuple[Component, Component], ConvWork] = {}

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
        dtype = inference_dtype(precision, torch_device)
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
        return [*options.mode.components(), *extra]

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
            self._check_fit(Component.VAE_A, *options.mode.global_components())

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

    def global_forward(
        self, mapping: Component, decoder: Component, x: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """VAE A's encoder, the mapping and a VAE B decoder on ``x`` (``1 x 3 x H x W`` in [-1, 1]).

        Padded to the encoder's multiple and cropped back; ``mask`` (``1 x 1 x H x W``) goes to the
        scratch mappings. Returns float32 ``1 x 3 x H x W`` on the CPU.
        """
        vae_a = self.components.get(Component.VAE_A)
        net = self.components.get(mapping)
        vae_b = self.components.get(decoder)
        multiple = vae_a.config.multiple  # asked of the encoder: 2 ** num_downsamples
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

    def _conv_work(self, mapping: Component, decoder: Component) -> ConvWork:
        """The path's convolution work per photo pixel, counted once by hooks on a probe image (the
        networks' sizes, not assumptions about them), with the attention block's share apart."""
        key = (mapping, decoder)
        if key not in self._conv_macs:
            modules = [self.components.get(c) for c in (Component.VAE_A, mapping, decoder)]
            blocks = [m for m in modules[1].modules() if isinstance(m, PartialNonLocalBlock)]
            probe = torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE)
            mask = None
            if mapping is not Component.MAPPING_QUALITY:
                # One hole pixel: a photo without holes skips the attention block and its
                # residual convolutions, which a scratched photo pays for on every cell.
                mask = torch.zeros(1, 1, PROBE_SIDE, PROBE_SIDE)
                mask[..., PROBE_SIDE // 2, PROBE_SIDE // 2] = 1.0
            counts = [
                count_conv_macs(group, lambda: self.global_forward(mapping, decoder, probe, mask))
                for group in (modules, blocks)
            ]
            self._conv_macs[key] = ConvWork(*(c / PROBE_SIDE**2 for c in counts))
        return self._conv_macs[key]

    def network_shape(self, mapping: Component) -> NetworkShape:
        """What the memory planner needs of the path through ``mapping``, asked of the loaded configs."""
        encoder = self.components.get(Component.VAE_A).config
        return NetworkShape(
            latent_width=self.components.get(mapping).config.widths()[-1],
            multiple=encoder.multiple,
            image_width=encoder.stage_channels()[0],
            attention=mapping is Component.MAPPING_SCRATCH,
        )

    def _plan(
        self,
        height: int,
        width: int,
        mapping: Component,
        decoder: Component,
        context: ScratchContext = ScratchContext.TILED,
    ) -> GlobalPlan:
        """:func:`latent_restore.planning.plan_global` for this path, with the loaded networks' sizes."""
        shape = self.network_shape(mapping)
        budget = self.memory_limit if self.memory_limit is not None else default_memory_budget(self.device)
        whole = {Component.MAPPING_SCRATCH: "nonlocal", Component.MAPPING_HR: "patch-attention"}.get(
            mapping, "full"
        )
        return plan_global(
            height, width, shape, budget, lambda: self._conv_work(mapping, decoder), context, whole
        )

    def restore_global(
        self,
        rgb: np.ndarray,
        mask: np.ndarray | None,
        hr: bool = False,
        context: ScratchContext = ScratchContext.TILED,
        progress: Progress | None = None,
        window: int | None = None,
    ) -> tuple[np.ndarray, str]:
        """Global restoration of float RGB ``H x W x 3`` in [0, 1] at its own size.

        Args:
            rgb: the photo.
            mask: bool/0-1 ``H x W`` defect mask (scratch modes) or None (quality mode).
            hr: with a mask, use the patch-attention mapping. The mask is widened and filled as the
                mapping's config says (``hole_dilation``, ``hole_fill``), as in its training.
            context: how far the partial non-local block attends (see :class:`ScratchContext`).
            progress: told after each tile when the photo is tiled.
            window: attend within windows of this side (pixels) whatever the plan says: for
                measuring what windows cost in quality (``benchmarks/tiling_quality.py``).

        Returns:
            The restored photo (float ``H x W x 3``) and the computation path taken.
        """
        mapping, decoder = Mode.of(mask is not None, hr).global_components()
        x = photo_tensor(rgb)
        m = None
        if mask is not None:
            holes = self.components.get(mapping).config
            m = dilate_holes(mask_to_tensor(mask), holes.hole_dilation)
            x = fill_holes(x, m, holes.hole_fill)
        plan = self._plan(x.shape[-2], x.shape[-1], mapping, decoder, context)
        if window is not None:
            cells = window // self.network_shape(mapping).multiple
            plan = dataclasses.replace(plan, window=cells, path=f"{plan.path}, attention windows {window} px")
        logger.info("global restoration: %s (%dx%d)", plan.path, x.shape[-1], x.shape[-2])
        for block in self.components.get(mapping).modules():
            if isinstance(block, PartialNonLocalBlock):
                block.window = plan.window

        def forward(piece: torch.Tensor, piece_mask: torch.Tensor | None) -> torch.Tensor:
            return self.global_forward(mapping, decoder, piece, piece_mask)

        if plan.tile is None:
            out = forward(x, m)
        else:
            out = run_tiled(forward, x, m, plan.tile, plan.overlap, progress.on_tile if progress else None)
        del x, m  # before the result is converted: a 12 MP photo's arrays are 0.2 GB each
        return photo_array(out), plan.path

    def restore_pix2pix(self, rgb: np.ndarray) -> tuple[np.ndarray, str]:
        """Global restoration of float RGB ``H x W x 3`` in [0, 1] by the pix2pix U-Net, at its own size.

        Returns:
            The restored photo (float ``H x W x 3``) and the computation path (``pix2pix``).
        """
        from latent_restore.pix2pix.inference import translate

        generator = self.components.get(Component.PIX2PIX)
        x = photo_tensor(rgb)
        logger.info("global restoration: pix2pix (%dx%d)", x.shape[-1], x.shape[-2])
        out = translate(generator, x)
        del x
        return photo_array(out), "pix2pix"

    def colorize(self, rgb: np.ndarray) -> np.ndarray:
        """Colorize float RGB ``H x W x 3`` in [0, 1]: its CIE L is kept, the chroma predicted."""
        from latent_restore.colorize.inference import colorize

        return colorize(self.components.get(Component.COLORIZE), rgb)

    def detect_scratches(self, rgb: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Defect mask (bool ``H x W``) of float RGB ``H x W x 3``.

        Args:
            rgb: the photo.
            threshold: defect probability from which a pixel is masked; ``None``: the detector's
                own (:attr:`ScratchDetectorConfig.threshold`, the released 0.4 unless calibrated).
        """
        detector = self.components.get(Component.SCRATCH_DETECTOR)
        prob = scratch_probability(detector, rgb, self.device, self.dtype)
        return prob >= (detector.config.threshold if threshold is None else threshold)

    def __call__(
        self,
        photo: Photo | np.ndarray | Image.Image,
        options: RestorationOptions | None = None,
        progress: Progress | None = None,
    ) -> RestorationResult:
        """Restore one photo.

        Args:
            photo: the photo (a decoded :class:`Photo`, an RGB/RGBA/gray array or a PIL image).
            options: what to do; None = the defaults.
            progress: told as each stage starts and after each tile (see :class:`Progress`).
        """
        options = options or RestorationOptions()
        progress = progress or Progress()
        self.check_options(options)
        if not isinstance(photo, Photo):
            photo = photo_from_array(photo)
        if options.preset is Preset.OFFICIAL:
            return restore_official(self, photo, options, progress)
        stages: dict[str, np.ndarray] = {}
        tone = MonochromeTone.fit(photo.rgb) if options.keep_monochrome else None
        mask = None
        if options.mode.detects_scratches:
            progress.stage(Stage.SCRATCH_DETECTION)
            mask = self.detect_scratches(photo.rgb)
            if options.return_stages:
                stages["scratch_mask"] = mask.astype(np.uint8) * 255
        progress.stage(Stage.GLOBAL)
        if options.model is RestorationModel.PIX2PIX:
            restored, path = self.restore_pix2pix(photo.rgb)
        else:
            restored, path = self.restore_global(
                photo.rgb, mask, options.hr, options.scratch_context, progress=progress
            )
        check_finite_output(restored, "global restoration")
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
            progress.stage(Stage.FACES)
            enhanced, boxes = self.face_enhancer(quantize(restored), size=options.resolved_face_size())
            if boxes:
                restored = enhanced.astype(np.float32) / 255.0
                if tone is not None:
                    restored = tone.apply(restored)
            if options.return_stages:
                stages["faces"] = quantize(restored)
        if options.colorize:
            # Last, and after the monochrome tone was re-applied: nothing turns the colours back to gray.
            progress.stage(Stage.COLORIZATION)
            restored = self.colorize(restored)
            check_finite_output(restored, "colorization")
            if options.return_stages:
                stages["colorize"] = quantize(restored)
        return RestorationResult(restored, photo.alpha, mask, boxes, stages, path)


def pix2pix_method(pipeline: RestorationPipeline) -> Callable[[np.ndarray], np.ndarray] | None:
    """The pix2pix baseline as an evaluation method (uint8 ``H x W x 3`` in and out), or None without weights.

    It restores from the degraded photo alone (no scratch mask, no faces), whatever the protocol.
    """
    if not pipeline.components.available(Component.PIX2PIX):
        return None
    options = RestorationOptions(faces=False, model=RestorationModel.PIX2PIX)
    return lambda image: quantize(pipeline(image, options).image)
