"""Training tasks of stage 2: the latent mapping (Wan et al. 2020 §3.2; spec §8.3) and the scratch detector.

Mapping: VAE A's encoder (frozen) turns a synthetically degraded photo into a latent, the mapping
network translates it, VAE B's decoder (frozen) renders it. The mapping learns from the latent L1
to VAE B's code of the clean photo (x60), a conditional image GAN (the discriminator sees the
degraded input beside the output), feature matching (x10) and, with weights, VGG (x10). The scratch
variants train on photos with synthetic defects and their masks.

Scratch detector: a U-Net trained on grayscale or RGB photos with synthetic structured defects and
their exact masks (TPAMI 2022 §3.4), with weighted / focal binary cross-entropy.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from latent_restore.core.checkpoint import load_component
from latent_restore.core.colour import LUMA
from latent_restore.core.components import Component
from latent_restore.core.config import ConfigError, config_from_dict
from latent_restore.core.data import ImageDataConfig, PairedDataConfig
from latent_restore.core.discriminators import DiscriminatorConfig, MultiScaleDiscriminator
from latent_restore.core.imaging import HoleFill, dilate_holes, fill_holes
from latent_restore.core.interfaces import LatentAutoencoder
from latent_restore.core.losses import build_vgg_loss
from latent_restore.core.training import OptimConfig, StepContext, TrainConfig, TrainTask, adam
from latent_restore.core.training.gan import GanLossWeights, conditional_gan_step
from stage2_mapping.data import ScratchDetectionDataset
from stage2_mapping.losses import latent_l1_loss, mask_iou, scratch_detection_loss
from stage2_mapping.mapping import (
    MappingConfig,
    MappingNetwork,
    NonLocalMappingConfig,
    NonLocalMappingNetwork,
    PatchAttentionMappingConfig,
    PatchAttentionMappingNetwork,
)
from stage2_mapping.scratch_detector import ScratchDetector, ScratchDetectorConfig, rgb_detector_from_gray


class MappingVariant(str, enum.Enum):
    """Which mapping network: plain (quality mode), partial non-local (scratch) or patch attention (HR)."""

    PLAIN = "plain"
    NONLOCAL = "nonlocal"
    PATCH_ATTENTION = "patch_attention"


VARIANTS: dict[MappingVariant, tuple[type, type[nn.Module], Component]] = {
    MappingVariant.PLAIN: (MappingConfig, MappingNetwork, Component.MAPPING_QUALITY),
    MappingVariant.NONLOCAL: (NonLocalMappingConfig, NonLocalMappingNetwork, Component.MAPPING_SCRATCH),
    MappingVariant.PATCH_ATTENTION: (
        PatchAttentionMappingConfig,
        PatchAttentionMappingNetwork,
        Component.MAPPING_HR,
    ),
}
"""Per variant: its config class, its network and the weights component it becomes by default."""

DECODER_COMPONENTS = (Component.VAE_B_QUALITY, Component.VAE_B_SCRATCH)
"""Components a mapping run may write VAE B under when it fine-tunes the decoder."""

ENCODER_COMPONENT = Component.VAE_A
"""Component a mapping run writes VAE A under when it fine-tunes the encoder."""


@dataclasses.dataclass
class MappingDataConfig(PairedDataConfig):
    """Paired training data of the mapping (:class:`~latent_restore.core.data.PairedDataConfig`).

    Attributes:
        with_scratches: add structured defects and their masks; ``None``: on for the scratch and
            HR variants, off for the plain one.
        no_defect_prob: with scratches, probability of a defect-free sample (released: 1/2).
    """

    with_scratches: bool | None = None
    no_defect_prob: float = 0.5


logger = logging.getLogger(__name__)


@dataclasses.dataclass
class MappingLossConfig:
    """Loss weights and optimiser variant of the mapping (released values; spec §8.3).

    Attributes:
        latent_weight: latent L1 (``l2_feat`` with ``--use_l1_feat``).
        gan_weight: conditional image LSGAN term.
        feat_weight: discriminator feature matching (``lambda_feat``).
        vgg_weight: VGG19 perceptual loss (``lambda_feat``); needs ``vgg_weights``.
        vgg_weights: torchvision ``vgg19`` state dict file; ``None`` skips the perceptual loss.
        l1_weight: plain image L1 to the clean photo (released ``--Smooth_L1``; off by default).
        ttur: two time-scale update rule: betas (0, 0.9), mapping lr / 2, discriminator lr * 2
            (the quality command; the scratch commands pass ``--no_TTUR``).

    With ``gan_weight`` and ``feat_weight`` both 0 the discriminator is neither run nor trained:
    latent L1 plus the image L1 through VAE B's decoder then optimise PSNR directly, at a
    fraction of the adversarial recipe's cost.
    """

    latent_weight: float = 60.0
    gan_weight: float = 1.0
    feat_weight: float = 10.0
    vgg_weight: float = 10.0
    vgg_weights: str | None = None
    l1_weight: float = 0.0
    ttur: bool = True

    @property
    def adversarial(self) -> bool:
        """Whether the conditional discriminator contributes to the mapping's loss."""
        return bool(self.gan_weight or self.feat_weight)


@dataclasses.dataclass
class MappingTrainingConfig:
    """Everything ``scripts/train_mapping.py`` reads.

    Attributes:
        variant: which mapping network.
        vae_a: component directory of the trained VAE A (its encoder is used, frozen unless
            ``encoder_component`` is set).
        vae_b: component directory of the trained VAE B (encoder for targets, decoder for images).
        component: weights component to write; ``None``: by variant (mapping_quality / _scratch / _hr).
        decoder_component: ``None`` (the paper): VAE B stays frozen. A VAE B component name
            (``vae_b_quality`` or ``vae_b_scratch``): VAE B's decoder is trained jointly with the
            mapping on the image losses and VAE B (its encoder unchanged) is written under that
            name too. The decoder then learns to render the mapping's outputs, which never sit
            exactly on VAE B's latent manifold; short schedules gain PSNR from it. The fine-tuned
            networks are not averaged by ``train.ema_decay`` (only the mapping is).
        encoder_component: ``None`` (the paper): VAE A stays frozen. ``vae_a``: VAE A's encoder is
            trained jointly too and VAE A is written as ``vae_a``. The encoder is the only network
            that sees the photo at full resolution, so training it on the image losses lets it
            remove noise and blur before the latent bottleneck. It gives up the latent alignment
            of real and synthetic old photos that VAE A's own training built, and every mapping
            run with that VAE A must then use the fine-tuned one (``--vae-a``).
        init_from: ``None`` (the paper): the mapping starts random. A trained mapping's component
            directory: every parameter with the same name and shape starts from it, the rest
            random. A scratch mapping started from the quality mapping begins with the quality
            mode's restoration of every cell the attention keeps (the partial non-local block
            passes valid cells through), so its training only has the holes left to learn.
            A list names several directories, each laid over the ones before it: a quality
            mapping's trunk with a scratch mapping's non-local block on top, for instance
            (name the scratch mapping first: it holds a trunk of its own, which a later source
            must overwrite). A resumed run takes everything from its checkpoint instead.
        init_renames: module paths of the ``init_from`` networks read under another name, e.g.
            ``{blocks: pre_blocks}``: a patch-attention mapping then starts the residual blocks
            before its attention from a plain mapping's residual blocks.
        trained_parts: ``None``: the whole mapping trains. Else the names of its parts that do
            (``[nonlocal_block]``: the partial non-local block alone); the rest stays as
            ``init_from`` left it. A scratch mapping built on a trained quality mapping then keeps
            its restoration of every cell outside the holes exactly, while the block learns to
            fill them for that trunk.
        context_lr_scale: learning-rate factor of the mapping's global-context branch
            (``model.global_context``). Warm-started, the branch begins at zero while the rest is
            trained; at the shared rate its small, noisy gradients moved it too little in a
            couple of thousand iterations to change the output.
        model: keys of the variant's config class (:class:`MappingConfig`,
            :class:`NonLocalMappingConfig` or :class:`PatchAttentionMappingConfig`).
        discriminator: conditional image discriminator (spectral norm for the scratch models).
    """

    variant: MappingVariant = MappingVariant.PLAIN
    vae_a: str = ""
    vae_b: str = ""
    component: str | None = None
    decoder_component: str | None = None
    encoder_component: str | None = None
    init_from: str | list[str] | None = None
    init_renames: dict[str, str] = dataclasses.field(default_factory=dict)
    trained_parts: list[str] | None = None
    context_lr_scale: float = 1.0
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
    loss: MappingLossConfig = dataclasses.field(default_factory=MappingLossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: MappingDataConfig = dataclasses.field(default_factory=MappingDataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def build_mapping(variant: MappingVariant, model: Mapping[str, Any]) -> nn.Module:
    """The variant's network from the ``model`` keys (unknown keys raise :class:`ConfigError`)."""
    config_cls, network_cls, _ = VARIANTS[variant]
    return network_cls(config_from_dict(config_cls, dict(model), where="model"))


def renamed(name: str, renames: Mapping[str, str]) -> str:
    """``name`` with a leading module path of ``renames`` replaced (``blocks.0.w`` -> ``pre_blocks.0.w``)."""
    for old, new in renames.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return name


def warm_start(network: nn.Module, trained: nn.Module, renames: Mapping[str, str] | None = None) -> list[str]:
    """Copy into ``network`` every parameter of ``trained`` with the same name and shape.

    Args:
        renames: module paths of ``trained`` to read under another name (:func:`renamed`).

    Returns:
        The names copied.

    Raises:
        ConfigError: nothing matches (the wrong component was named).
    """
    source = {renamed(k, renames or {}): v for k, v in trained.state_dict().items()}
    target = network.state_dict()
    copied = [k for k, v in target.items() if k in source and source[k].shape == v.shape]
    if not copied:
        raise ConfigError(
            f"init_from: no parameter of the {type(trained).__name__} fits the {type(network).__name__}"
        )
    network.load_state_dict({**target, **{k: source[k] for k in copied}})
    logger.info("init_from: %d of %d tensors start from the trained network", len(copied), len(target))
    return copied


def freeze_all_but(network: nn.Module, parts: list[str]) -> None:
    """Stop training every parameter of ``network`` outside the named child modules ``parts``.

    Raises:
        ConfigError: a part the network does not have (a typo would silently freeze everything).
    """
    children = dict(network.named_children())
    unknown = sorted(set(parts) - set(children))
    if unknown:
        raise ConfigError(f"trained_parts: {unknown} not in the mapping's parts {sorted(children)}")
    for name, child in children.items():
        child.requires_grad_(name in parts)


def _mapping_adam(
    mapping: nn.Module,
    optim: OptimConfig,
    context_lr_scale: float,
    lr_scale: float = 1.0,
    betas: tuple[float, float] | None = None,
) -> torch.optim.Adam:
    """Adam over the mapping, its global-context branch (if any) at ``context_lr_scale`` times the rate."""
    groups: dict[bool, list[nn.Parameter]] = {False: [], True: []}
    for name, param in mapping.named_parameters():
        if param.requires_grad:
            groups[name.startswith("context.")].append(param)
    if not groups[True] and context_lr_scale != 1.0:
        raise ConfigError("context_lr_scale needs a mapping with model.global_context: true")
    params: list[dict[str, Any]] = [{"params": groups[False]}]
    if groups[True]:
        params.append({"params": groups[True], "lr": optim.lr * lr_scale * context_lr_scale})
    return adam(params, optim, lr_scale=lr_scale, betas=betas)


class MappingTask(TrainTask):
    """Mapping network + conditional multi-scale discriminator between two frozen VAEs."""

    ema_models = ("mapping",)

    def __init__(self, config: MappingTrainingConfig, device: torch.device) -> None:
        if not config.vae_a or not config.vae_b:
            raise ConfigError("vae_a and vae_b must name trained VAE component directories (--vae-a/--vae-b)")
        self.config = config
        vaes = [load_component(path, LatentAutoencoder, device) for path in (config.vae_a, config.vae_b)]
        self.vae_a, self.vae_b = (vae.requires_grad_(False) for vae in vaes)
        mapping = build_mapping(config.variant, config.model)
        sources = [config.init_from] if isinstance(config.init_from, str) else config.init_from or []
        for source in sources:
            warm_start(mapping, load_component(source), config.init_renames)
        if config.trained_parts is not None:
            freeze_all_but(mapping, config.trained_parts)
        channels = mapping.config.latent_channels
        for name, vae in (("vae_a", self.vae_a), ("vae_b", self.vae_b)):
            if vae.config.latent_channels != channels:
                raise ConfigError(
                    f"{name} has {vae.config.latent_channels} latent channels, the mapping {channels}"
                )
        multiple = max(self.vae_a.config.multiple, self.vae_b.config.multiple)
        if config.data.crop_size % multiple:
            raise ConfigError(f"data.crop_size must be a multiple of {multiple}")
        image_channels = self.vae_a.config.in_channels
        self.models = {
            "mapping": mapping.to(device),
            "discriminator": MultiScaleDiscriminator.from_config(2 * image_channels, config.discriminator).to(
                device
            ),
        }
        if config.decoder_component is not None:
            if config.decoder_component not in DECODER_COMPONENTS:
                raise ConfigError(f"decoder_component is one of {tuple(c.value for c in DECODER_COMPONENTS)}")
            self.models["decoder"] = self.vae_b.decoder.requires_grad_(True)
        if config.encoder_component is not None:
            if config.encoder_component != ENCODER_COMPONENT:
                raise ConfigError(f"encoder_component is {ENCODER_COMPONENT.value!r} or null")
            self.models["encoder"] = self.vae_a.encoder.requires_grad_(True)
        optim = config.optim
        if config.loss.ttur:
            self.optimizers = {
                "mapping": _mapping_adam(
                    mapping, optim, config.context_lr_scale, lr_scale=0.5, betas=(0.0, 0.9)
                ),
                "discriminator": adam(
                    self.models["discriminator"].parameters(), optim, lr_scale=2.0, betas=(0.0, 0.9)
                ),
            }
            for name in ("decoder", "encoder"):
                if name in self.models:
                    self.optimizers[name] = adam(
                        self.models[name].parameters(), optim, lr_scale=0.5, betas=(0.0, 0.9)
                    )
        else:
            self.optimizers = {
                name: _mapping_adam(m, optim, config.context_lr_scale)
                if name == "mapping"
                else adam(m.parameters(), optim)
                for name, m in self.models.items()
            }
        self.vgg = build_vgg_loss(config.loss.vgg_weights, config.loss.vgg_weight)
        if self.vgg is not None:
            self.vgg.to(device)

    @property
    def with_scratches(self) -> bool:
        if self.config.data.with_scratches is not None:
            return self.config.data.with_scratches
        return self.config.variant is not MappingVariant.PLAIN

    @property
    def hole_dilation(self) -> int:
        return getattr(self.models["mapping"].config, "hole_dilation", 0)

    @property
    def hole_fill(self) -> HoleFill:
        return getattr(self.models["mapping"].config, "hole_fill", HoleFill.WHITE)

    def dataset(self) -> Dataset:
        data = self.config.data
        return data.build(
            self.config.train.seed, with_scratches=self.with_scratches, no_defect_prob=data.no_defect_prob
        )

    def _map(
        self, mapping: nn.Module, degraded: torch.Tensor, mask: torch.Tensor, encoder: nn.Module | None = None
    ) -> torch.Tensor:
        """VAE A latent of the degraded photo, then the mapping.

        Without ``encoder`` (a trained VAE A encoder) the frozen encoder runs without gradient.
        """
        if encoder is not None:
            return mapping(encoder(degraded), mask)
        with torch.no_grad():
            latent = self.vae_a.encode(degraded)
        return mapping(latent, mask)

    def step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = self.config.loss
        degraded, clean, mask = _inputs(batch, dilation=self.hole_dilation, fill=self.hole_fill)
        with torch.no_grad():
            target = self.vae_b.encode(clean)
        mapped = self._map(ctx.models["mapping"], degraded, mask, ctx.models.get("encoder"))
        fake = (ctx.models["decoder"] if "decoder" in self.models else self.vae_b.decoder)(mapped)

        latent_l1 = latent_l1_loss(mapped, target)
        weights = GanLossWeights.pix2pixhd(loss, self.config.discriminator.num_layers)
        result = conditional_gan_step(
            ctx,
            self.models["discriminator"],
            degraded,
            clean,
            fake,
            weights,
            vgg=self.vgg,
            extra_terms={"g/latent_l1": latent_l1 * loss.latent_weight},
        )
        return {**result.logs(), "metric/latent_l1": latent_l1}

    def samples(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        degraded, clean, mask = _inputs(batch, 4, self.hole_dilation, self.hole_fill)
        restored = self.vae_b.decode(self._map(self.models["mapping"], degraded, mask))
        return {"degraded": degraded, "restored": restored, "clean": clean}

    def final_weights(self, models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        component = self.config.component or VARIANTS[self.config.variant][2]
        weights = {component: models["mapping"]}
        if self.config.decoder_component is not None:
            weights[Component(self.config.decoder_component)] = self.vae_b
        if self.config.encoder_component is not None:
            weights[ENCODER_COMPONENT] = self.vae_a
        return weights


def _inputs(
    batch: dict[str, Any], count: int | None = None, dilation: int = 0, fill: HoleFill = HoleFill.WHITE
) -> tuple[torch.Tensor, ...]:
    """``(degraded, clean, mask)`` of the first ``count`` samples, the defects filled.

    The pipeline fills the detected mask as the mapping's config says (``fill``; released: white)
    before VAE A encodes a photo, in HR mode after dilating it (``dilation``), so the mapping
    trains on the same picture of its holes; quality-mode masks are all zero and change nothing.
    """
    degraded, clean, mask = (batch[key][:count] for key in ("degraded", "clean", "mask"))
    mask = dilate_holes(mask, dilation)
    return fill_holes(degraded, mask, fill), clean, mask


def build_mapping_task(config: MappingTrainingConfig, device: torch.device) -> MappingTask:
    return MappingTask(config, device)


@dataclasses.dataclass
class ScratchDataConfig(ImageDataConfig):
    """Synthetic scratch-detection data (grayscale or RGB crops with structured defects and exact masks).

    Attributes:
        no_defect_prob: probability of a negative sample without defects.
        view_size: 0: defects drawn on the crop at the photo's resolution; else the short side the
            photo is first resized to, defects drawn on a square of that side (see
            :class:`~stage2_mapping.data.ScratchDetectionDataset`).
        grayscale_prob: for an RGB detector (``model.in_channels: 3``), share of photos made gray
            (many old prints are); a grayscale detector's samples are always gray.

    The degradation's defects are always on; the other fields are :class:`ImageDataConfig`'s.
    """

    no_defect_prob: float = 0.1
    view_size: int = 0
    grayscale_prob: float = 0.0


@dataclasses.dataclass
class ScratchLossConfig:
    """Attributes: pos_weight: weight of scratch pixels; focal_gamma: focusing exponent (0: weighted BCE);
    dice_weight: weight of the batch soft-Dice term (0: off, as released)."""

    pos_weight: float = 1.0
    focal_gamma: float = 2.0
    dice_weight: float = 0.0


@dataclasses.dataclass
class ScratchTrainingConfig:
    """Everything ``scripts/train_scratch.py`` reads.

    ``init_from``: ``None``: the detector starts random; a trained detector's component directory:
    every parameter of the same name and shape starts from it (:func:`warm_start`), so a new data
    recipe can continue a trained detector instead of paying for its first thousand iterations. A
    grayscale detector continued as an RGB one (``model.in_channels: 3``) keeps its stem, spread
    over the channels by the luma weights (:func:`rgb_detector_from_gray`).
    """

    init_from: str | None = None
    model: ScratchDetectorConfig = dataclasses.field(default_factory=ScratchDetectorConfig)
    loss: ScratchLossConfig = dataclasses.field(default_factory=ScratchLossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-4, beta1=0.9))
    data: ScratchDataConfig = dataclasses.field(default_factory=ScratchDataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


class ScratchTask(TrainTask):
    """The scratch-detection U-Net on synthetic defect masks."""

    ema_models = ("detector",)

    def __init__(self, config: ScratchTrainingConfig, device: torch.device) -> None:
        if config.data.crop_size % config.model.multiple:
            raise ConfigError(f"data.crop_size must be a multiple of {config.model.multiple}")
        self.config = config
        detector = ScratchDetector(config.model)
        if config.init_from:
            trained = load_component(config.init_from)
            if trained.config.in_channels == 1 and config.model.in_channels == 3:
                trained = rgb_detector_from_gray(trained, LUMA)
            warm_start(detector, trained)
        self.models = {"detector": detector.to(device)}
        self.optimizers = {"detector": adam(self.models["detector"].parameters(), config.optim)}

    def dataset(self) -> Dataset:
        data = self.config.data
        return ScratchDetectionDataset(
            data.clean_dirs,
            data.crop_size,
            self.config.train.seed,
            data.length,
            data.degradation,
            no_defect_prob=data.no_defect_prob,
            cache=data.cache,
            exclude_held_out=data.exclude_held_out,
            view_size=data.view_size or None,
            channels=self.config.model.in_channels,
            grayscale_prob=data.grayscale_prob,
        )

    def step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        logits = ctx.models["detector"](batch["image"])
        settings = self.config.loss
        loss = scratch_detection_loss(
            logits, batch["mask"], settings.pos_weight, settings.focal_gamma, settings.dice_weight
        )
        ctx.backward(loss)
        return {"loss/detection": loss, "metric/iou": mask_iou(logits.detach(), batch["mask"])}

    def samples(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        image, mask = batch["image"][:4], batch["mask"][:4]
        predicted = torch.sigmoid(self.models["detector"](image)) * 2 - 1
        return {"image": image, "predicted": predicted, "mask": mask * 2 - 1}

    def final_weights(self, models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        return {Component.SCRATCH_DETECTOR: models["detector"]}


def build_scratch_task(config: ScratchTrainingConfig, device: torch.device) -> ScratchTask:
    return ScratchTask(config, device)
