"""Image-quality measures shared by the inversion losses and its evaluation: MAE, PSNR, SSIM.

All three take batches ``(B, C, H, W)`` and return one value per image ``(B,)``; they are
differentiable, so SSIM also serves as a training term (``1 - SSIM``).

SSIM follows scikit-image's ``structural_similarity`` exactly, so numbers are comparable with
papers that used it: by default a 7 x 7 uniform window with the sample covariance
(``skimage`` defaults); ``gaussian=True`` is Wang et al.'s 11 x 11 Gaussian window of
sigma 1.5 (``skimage`` with ``gaussian_weights=True``; Wang et al. also set
``use_sample_covariance=False``). Constants ``K1 = 0.01``, ``K2 = 0.03``. The mean is taken
over the pixels whose window lies inside the image (skimage crops the same border) and over
channels. PSNR is ``10 log10(data_range^2 / MSE)`` per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mae(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image.

    Shape:
        prediction, target: ``(B, C, H, W)``. Returns ``(B,)``.
    """
    return (prediction - target).abs().flatten(1).mean(1)


def psnr(
    prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB (``inf`` for identical images).

    Shape:
        prediction, target: ``(B, C, H, W)``. Returns ``(B,)``.
    """
    mse = (prediction - target).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _window(
    gaussian: bool, win_size: int, sigma: float, dtype: torch.dtype, device
) -> torch.Tensor:
    if not gaussian:
        weights = torch.full((win_size,), 1.0 / win_size, dtype=dtype, device=device)
    else:
        # scipy.ndimage.gaussian_filter's kernel: radius int(truncate * sigma + 0.5) with
        # truncate 3.5, which is what skimage uses for its 11 x 11 window at sigma 1.5.
        radius = (win_size - 1) // 2
        x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
        weights = torch.exp(-0.5 * (x / sigma) ** 2)
        weights = weights / weights.sum()
    return weights


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    gaussian: bool = False,
    win_size: int | None = None,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity per image (scikit-image's definition, see module docstring).

    Args:
        prediction, target: ``(B, C, H, W)`` images.
        data_range: value range of the images (1 for [0, 1]).
        gaussian: Gaussian window of ``sigma`` instead of a uniform one.
        win_size: window side (default 7, or ``2 int(3.5 sigma + 0.5) + 1`` = 11 for the
            Gaussian window); must be odd and not larger than the image.
        use_sample_covariance: normalise variances by ``N - 1`` (skimage's default).

    Returns:
        ``(B,)`` mean SSIM.
    """
    if win_size is None:
        win_size = 2 * int(3.5 * sigma + 0.5) + 1 if gaussian else 7
    if win_size % 2 != 1:
        raise ValueError(f"SSIM window size must be odd, got {win_size}")
    if min(prediction.shape[-2:]) < win_size:
        raise ValueError(
            f"SSIM window {win_size} is larger than the image {tuple(prediction.shape[-2:])}"
        )
    batch, channels, height, width = prediction.shape
    weights = _window(gaussian, win_size, sigma, prediction.dtype, prediction.device)
    kernel_x = weights.view(1, 1, 1, -1)
    kernel_y = weights.view(1, 1, -1, 1)

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        # 'Valid' filtering equals skimage's reflect-padded filter on the pixels it keeps.
        # Channels go to the batch axis: single-channel filters and average pooling are
        # far faster on CPU than grouped convolutions.
        image = image.reshape(batch * channels, 1, height, width)
        if not gaussian:
            return F.avg_pool2d(image, win_size, stride=1)
        return F.conv2d(F.conv2d(image, kernel_x), kernel_y)

    n = win_size**2
    cov_norm = n / (n - 1) if use_sample_covariance else 1.0
    mean_p, mean_t = local_mean(prediction), local_mean(target)
    var_p = cov_norm * (local_mean(prediction * prediction) - mean_p * mean_p)
    var_t = cov_norm * (local_mean(target * target) - mean_t * mean_t)
    cov = cov_norm * (local_mean(prediction * target) - mean_p * mean_t)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    numerator = (2 * mean_p * mean_t + c1) * (2 * cov + c2)
    denominator = (mean_p**2 + mean_t**2 + c1) * (var_p + var_t + c2)
    return (numerator / denominator).reshape(batch, -1).mean(1)
