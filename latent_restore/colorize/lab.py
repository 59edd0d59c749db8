"""sRGB <-> CIE Lab (D65, 2° observer) in torch, and the network's normalisation of L and ab.

Colorization works in Lab (Zhang et al. 2016, "Colorful Image Colorization", §2): the lightness L
is the input and is kept, only the chroma ``(a, b)`` is predicted, so the result has exactly the
tones of the photo it was given. The constants are those of ``skimage.color`` (sRGB primaries,
D65 white ``(0.95047, 1, 1.08883)``, CIE 1976 with the linear toe), so values agree with
``skimage.color.rgb2lab``, which the tests and the CIEDE2000 evaluation use.

Normalisation into the networks' [-1, 1] range (as in pix2pix's colorization, Isola et al. 2017):
``L_n = L / 50 - 1`` (L in [0, 100]) and ``ab_n = ab / 110`` (the sRGB gamut spans a in about
[-86, 98] and b in about [-108, 94], so a ``tanh`` output times 110 reaches every sRGB colour).
"""

from __future__ import annotations

import torch

L_SCALE = 50.0
AB_SCALE = 110.0

WHITE_D65 = (0.95047, 1.0, 1.08883)
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_EPSILON = 0.008856
_KAPPA = 7.787
_OFFSET = 16.0 / 116.0


def _matrix(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``rows @ x`` over the channel dimension of ``N x 3 x H x W``."""
    return torch.einsum("ij,njhw->nihw", rows.to(x.dtype), x)


def _rgb_to_xyz_matrix(device: torch.device) -> torch.Tensor:
    return torch.tensor(_RGB_TO_XYZ, dtype=torch.float64, device=device)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve (IEC 61966-2-1)."""
    return torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Apply the sRGB transfer curve; inputs below 0 stay linear (they are out of gamut anyway)."""
    return torch.where(
        linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, linear * 12.92
    )


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``N x 3 x H x W`` in [0, 1] -> Lab ``N x 3 x H x W`` (L in [0, 100])."""
    xyz = _matrix(srgb_to_linear(rgb), _rgb_to_xyz_matrix(rgb.device))
    white = torch.tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    t = xyz / white
    f = torch.where(t > _EPSILON, t.clamp(min=_EPSILON) ** (1 / 3), _KAPPA * t + _OFFSET)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_linear_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``N x 3 x H x W`` -> linear RGB, not clipped (values outside [0, 1] are out of gamut)."""
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=1)
    t = torch.where(f > 0.2068966, f**3, (f - _OFFSET) / _KAPPA)
    white = torch.tensor(WHITE_D65, dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    return _matrix(t * white, torch.linalg.inv(_rgb_to_xyz_matrix(lab.device)))


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> sRGB in [0, 1] (out-of-gamut colours clipped; see :func:`fit_chroma_to_gamut` to avoid that)."""
    return linear_to_srgb(lab_to_linear_rgb(lab)).clamp(0, 1)


def fit_chroma_to_gamut(lightness: torch.Tensor, ab: torch.Tensor, steps: int = 12) -> torch.Tensor:
    """Scale each pixel's chroma down, keeping L and hue, until the colour lies in the sRGB gamut.

    Clipping an out-of-gamut colour channel by channel would change its lightness; shrinking
    ``(a, b)`` towards the neutral axis does not. Per pixel, the largest factor in [0, 1] found by
    bisection is used (factor 0, a gray of the same L, is always in gamut).

    Args:
        lightness: ``N x 1 x H x W`` L in [0, 100].
        ab: ``N x 2 x H x W`` chroma.
        steps: bisection steps (12 gives the factor to 1/4096).

    Returns:
        The scaled ``N x 2 x H x W`` chroma.
    """

    def inside(lum: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        linear = lab_to_linear_rgb(torch.cat([lum, chroma], dim=1))
        return ((linear >= -1e-6) & (linear <= 1 + 1e-6)).all(dim=1, keepdim=True)

    ok = inside(lightness, ab)
    if bool(ok.all()):
        return ab
    # Bisect only the out-of-gamut pixels (as a 1 x C x P x 1 strip): large photos stay cheap.
    flat_l = lightness.permute(1, 0, 2, 3).reshape(1, -1)
    flat_ab = ab.permute(1, 0, 2, 3).reshape(2, -1)
    todo = torch.nonzero(~ok.permute(1, 0, 2, 3).reshape(-1)).squeeze(1)
    lum = flat_l[:, todo].view(1, 1, -1, 1)
    chroma = flat_ab[:, todo].view(1, 2, -1, 1)
    lo = torch.zeros_like(lum)
    hi = torch.ones_like(lum)
    for _ in range(steps):
        mid = (lo + hi) / 2
        fits = inside(lum, chroma * mid)
        lo = torch.where(fits, mid, lo)
        hi = torch.where(fits, hi, mid)
    flat_ab = flat_ab.clone()
    flat_ab[:, todo] = (chroma * lo).view(2, -1)
    return flat_ab.view(2, ab.shape[0], *ab.shape[2:]).permute(1, 0, 2, 3)


def normalize_lightness(lightness: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] -> [-1, 1]."""
    return lightness / L_SCALE - 1.0


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    """ab -> about [-1, 1] (divided by 110)."""
    return ab / AB_SCALE


def denormalize_ab(ab: torch.Tensor) -> torch.Tensor:
    """Network output in [-1, 1] -> ab."""
    return ab * AB_SCALE
