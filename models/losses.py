"""RNA loss terms (paper eq. 3-10) as small pure functions on batches; weights are applied by the caller."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 3: squared L2 of the reconstructed colour, summed over channels, mean over samples."""
    return ((pred - target) ** 2).sum(-1).mean()


def finite_difference_jacobian(uv: torch.Tensor, uv_dx: torch.Tensor, uv_dy: torch.Tensor, step: float
                               ) -> torch.Tensor:
    """(N, 2, 2) Jacobian d(u, v)/d(x, y) from T at p, p + step*e_x, p + step*e_y (normalized units)."""
    return torch.stack([(uv_dx - uv) / step, (uv_dy - uv) / step], dim=-1)


def rigidity(jacobian: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Eq. 4 (symmetric Dirichlet, as LNA): ||J^T J||_F + ||(J^T J)^-1||_F, minimal when J is a rotation."""
    jtj = jacobian.transpose(1, 2) @ jacobian
    a, b, c, d = jtj[:, 0, 0], jtj[:, 0, 1], jtj[:, 1, 0], jtj[:, 1, 1]
    det = (a * d - b * c).clamp_min(eps)
    fro = jtj.flatten(1).norm(dim=1)
    # the inverse of a 2x2 matrix has the same Frobenius norm divided by |det|
    return (fro + fro / det).mean()


def position(uv: torch.Tensor, xy_n: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ||T(p) - (x, y)|| on reference-frame ROI pixels (normalized units)."""
    return (uv - xy_n).norm(dim=-1).mean() if uv.numel() else uv.sum()


def weighted_correspondence(uv: torch.Tensor, uv_match: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 6: M(p) * ||T(p) - T(p')|| over valid pairs (weight = M(p) * validity, M detached by the caller)."""
    return (weight * (uv - uv_match).norm(dim=-1)).sum() / weight.numel() if uv.numel() else uv.sum()


def mask_bce(logit: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 7 first term: BCE of M against a 0/1 target (ROI on the reference frame, or a propagated mask)."""
    loss = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    if valid is None:
        return loss.mean()
    return (loss * valid).sum() / valid.sum().clamp_min(1.0)


def alpha_consistency(alpha: torch.Tensor, alpha_match: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 7 second/third terms and eq. 10's second: |M(p) - M(p')| along correspondences."""
    return ((alpha - alpha_match).abs() * valid).sum() / valid.numel()


def illumination(scale: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 8: ||L - 1||^2, optionally weighted (by M: L only matters where the atlas is shown)."""
    err = ((scale - 1.0) ** 2).sum(-1)
    if weight is None:
        return err.mean()
    return (err * weight).mean()


def non_occluded(alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 10 first term: |1 - M(p)|^2 on the non-occluded set P_no (target = 1 there, 0 elsewhere)."""
    return (((1.0 - alpha) ** 2) * target).sum() / target.numel()
