"""CAM methods from a principal direction of the activations (docs/method.md):
Eigen-CAM, Eigen-Grad-CAM and KPCA-CAM.

Each reads ``X``, one row per position and one column per channel, and maps
every position to its coordinate along the first principal direction.  The
direction's sign is arbitrary (an SVD gives either); pytorch-grad-cam leaves
it to LAPACK, so its Eigen-Grad-CAM map can come out negated and rectified
to nothing.  Here it is fixed: Eigen-CAM's projection sums to >= 0 (it is not
centred); Eigen-Grad-CAM's and KPCA-CAM's largest coordinate in absolute value
is positive (scikit-learn's ``svd_flip``, which KPCA-CAM's KernelPCA applies,
and Seg-Eigen-CAM's Eq. 13).  Found from the smaller Gram matrix, in float64:
a full SVD of ``[hw, K]`` is ~50x slower for ResNet50 maps.
"""
from __future__ import annotations

import torch

from wsol.cams.base import CAMMethod
from wsol.dual_branch import clamp_weights

__all__ = ["EigenCAM", "EigenGradCAM", "KPCACAM"]

Tensor = torch.Tensor


def _positions(maps: Tensor, centre: bool) -> Tensor:
    """[B, K, h, w] -> [B, hw, K] in float64, NaN as 0 (pytorch-grad-cam),
    optionally centred over the positions."""
    flat = torch.nan_to_num(maps.double(), nan=0.0).flatten(2).transpose(1, 2)
    return flat - flat.mean(1, keepdim=True) if centre else flat


def _largest_positive(projection: Tensor) -> Tensor:
    """Sign each row so that its entry of largest magnitude is positive."""
    largest = projection.gather(1, projection.abs().argmax(1, keepdim=True))
    return projection * torch.where(largest < 0, -1.0, 1.0).to(projection.dtype)


def first_component(flat: Tensor) -> Tensor:
    """Coordinates of the rows of ``flat`` [B, n, K] along its first right
    singular vector (``flat @ v1 = s1 u1``): [B, n]."""
    if flat.shape[1] <= flat.shape[2]:
        values, vectors = torch.linalg.eigh(flat @ flat.transpose(1, 2))
        return vectors[:, :, -1] * values[:, -1:].clamp_min(0).sqrt()
    _, vectors = torch.linalg.eigh(flat.transpose(1, 2) @ flat)
    return (flat @ vectors[:, :, -1:])[:, :, 0]


class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): no class, no weights.
    map = projection of A on its first principal direction, signed to sum >= 0.

    Not centred, as the paper's SVD of the activations."""
    name = "eigencam"
    rectify = False

    def raw_map(self, inputs):
        a = inputs.activations
        projection = first_component(_positions(a, centre=False))
        sign = 1 - 2 * (projection.sum(1, keepdim=True) < 0).to(projection.dtype)
        return (projection * sign).to(a.dtype).view(a.shape[0], *a.shape[2:])


class EigenGradCAM(CAMMethod):
    """Eigen-Grad-CAM (pytorch-grad-cam): Eigen-CAM of the gradient-weighted activations.
    map = ReLU(first principal component of g * A, centred over the positions).

    On the sigmoid branch the element-wise weights ``g`` are clamped at zero
    first, as hirescam's."""
    name = "eigengradcam"
    needs_gradients = True
    uses_gradients = True

    def raw_map(self, inputs):
        a, grad = inputs.activations, inputs.gradients
        if inputs.clamp:
            grad = clamp_weights(grad)
        projection = _largest_positive(first_component(_positions(grad * a, centre=True)))
        return projection.to(a.dtype).view(a.shape[0], *a.shape[2:])


class KPCACAM(CAMMethod):
    """KPCA-CAM (Karmani et al., 2024): Eigen-CAM with kernel PCA.
    map = ReLU(first kernel principal component of the centred activations),

    pytorch-grad-cam's KernelPCA(n_components=1) with its defaults: the
    ``sigmoid`` kernel tanh(gamma <x, y> + coef0), ``gamma`` = 1 / K when None,
    ``coef0`` = 1; the kernel matrix centred; coordinates sqrt(lambda_1) u_1.
    Also ``rbf`` (exp(-gamma |x - y|^2)), ``poly`` (gamma <x, y> + coef0)^degree,
    ``cosine`` and ``linear``.  No class and no weights."""
    name = "kpcacam"
    KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")

    def __init__(self, kernel: str = "sigmoid", gamma: float | None = None,
                 coef0: float = 1.0, degree: int = 3):
        if kernel not in self.KERNELS:
            raise ValueError(f"unknown KPCA-CAM kernel {kernel!r}; choose one of "
                             f"{', '.join(self.KERNELS)}")
        self.kernel, self.gamma, self.coef0, self.degree = kernel, gamma, float(coef0), int(degree)

    def kernel_matrix(self, flat: Tensor) -> Tensor:
        """The kernel between the rows of ``flat`` [B, n, K]: [B, n, n]."""
        gamma = 1.0 / flat.shape[2] if self.gamma is None else float(self.gamma)
        dot = flat @ flat.transpose(1, 2)
        if self.kernel == "sigmoid":
            return torch.tanh(gamma * dot + self.coef0)
        if self.kernel == "poly":
            return (gamma * dot + self.coef0) ** self.degree
        if self.kernel == "rbf":
            norms = dot.diagonal(dim1=1, dim2=2)
            return torch.exp(-gamma * (norms[:, :, None] + norms[:, None, :] - 2 * dot)
                             .clamp_min(0))
        if self.kernel == "cosine":
            norms = dot.diagonal(dim1=1, dim2=2).sqrt().clamp_min(1e-300)
            return dot / (norms[:, :, None] * norms[:, None, :])
        return dot

    def raw_map(self, inputs):
        a = inputs.activations
        matrix = self.kernel_matrix(_positions(a, centre=True))
        # Centred in feature space, as scikit-learn's KernelCenterer.
        matrix = (matrix - matrix.mean(1, keepdim=True) - matrix.mean(2, keepdim=True)
                  + matrix.mean((1, 2), keepdim=True))
        values, vectors = torch.linalg.eigh(matrix)
        projection = _largest_positive(vectors[:, :, -1]) * values[:, -1:].clamp_min(0).sqrt()
        return projection.to(a.dtype).view(a.shape[0], *a.shape[2:])
