"""Point-cloud metrics as PointFlow (Yang et al. 2019) defines them.

* Chamfer distance (CD): squared Euclidean distances, each direction averaged over
  its points, the two directions summed: ``mean_a min_b |a-b|^2 + mean_b min_a |a-b|^2``.
* Earth mover's distance (EMD): approximated by entropic optimal transport
  (log-domain Sinkhorn, ``eps = 1e-3``, 200 iterations) between equal-size random
  subsets (512 points) with uniform weights; the transport cost of the plan, in
  Euclidean (not squared) distance, averaged per point.
* MMD: mean over reference clouds of the distance to the nearest generated cloud.
* COV: fraction of reference clouds that are the nearest neighbour of some generated cloud.
* 1-NNA: leave-one-out 1-nearest-neighbour accuracy of telling generated from
  reference clouds in the union of both sets (50% is ideal).

pytorch3d's ``knn_points`` is used for CD where it is importable.
"""

from __future__ import annotations

import torch


def _nn_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` squared distance from each point of ``a`` to its nearest point of ``b``."""
    try:
        from pytorch3d.ops import knn_points  # optional accelerator

        return knn_points(a, b, K=1).dists[..., 0]
    except ImportError:
        return torch.cdist(a, b).pow(2).amin(-1)


def chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B]`` Chamfer distances between ``a [B, N, 3]`` and ``b [B, M, 3]`` (PointFlow's convention)."""
    return _nn_sq(a, b).mean(-1) + _nn_sq(b, a).mean(-1)


def emd(
    a: torch.Tensor,
    b: torch.Tensor,
    points: int = 512,
    eps: float = 1e-3,
    iters: int = 200,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[B]`` approximate EMD (entropic OT on random subsets of ``points`` points)."""

    def subset(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] <= points:
            return x
        idx = torch.rand(x.shape[0], x.shape[1], generator=generator).argsort(1)[:, :points].to(x.device)
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, 3))

    a, b = subset(a), subset(b)
    cost = torch.cdist(a, b)  # [B, N, M]
    n, m = cost.shape[1], cost.shape[2]
    log_mu = torch.full((cost.shape[0], n), -torch.log(torch.tensor(float(n))), device=a.device)
    log_nu = torch.full((cost.shape[0], m), -torch.log(torch.tensor(float(m))), device=a.device)
    f = torch.zeros_like(log_mu)
    g = torch.zeros_like(log_nu)
    for _ in range(iters):
        f = eps * (log_mu - torch.logsumexp((g[:, None, :] - cost) / eps, dim=2))
        g = eps * (log_nu - torch.logsumexp((f[:, :, None] - cost) / eps, dim=1))
    plan = torch.exp((f[:, :, None] + g[:, None, :] - cost) / eps)
    return (plan * cost).sum((1, 2))


def pairwise(xs: torch.Tensor, ys: torch.Tensor, metric: str = "cd", batch: int = 64) -> torch.Tensor:
    """``[len(xs), len(ys)]`` distances between every pair of clouds."""
    fn = chamfer if metric == "cd" else emd
    out = torch.empty(len(xs), len(ys))
    for i in range(len(xs)):
        for j in range(0, len(ys), batch):
            y = ys[j : j + batch]
            out[i, j : j + len(y)] = fn(xs[i : i + 1].expand(len(y), -1, -1), y).cpu()
    return out


def coverage_mmd(gen_ref: torch.Tensor) -> tuple[float, float]:
    """COV and MMD from the ``[G, R]`` distances between generated and reference clouds."""
    cov = gen_ref.argmin(1).unique().numel() / gen_ref.shape[1]
    mmd = gen_ref.min(0).values.mean().item()
    return cov, mmd


def one_nna(gen_gen: torch.Tensor, gen_ref: torch.Tensor, ref_ref: torch.Tensor) -> float:
    """1-NNA accuracy from the three distance blocks (generated vs reference)."""
    g, r = gen_gen.shape[0], ref_ref.shape[0]
    full = torch.cat([torch.cat([gen_gen, gen_ref], 1), torch.cat([gen_ref.T, ref_ref], 1)], 0).clone()
    full.fill_diagonal_(float("inf"))
    labels = torch.cat([torch.ones(g), torch.zeros(r)])
    nearest = full.argmin(1)
    return (labels[nearest] == labels).float().mean().item()


def distribution_metrics(gen: torch.Tensor, ref: torch.Tensor, metric: str = "cd") -> dict[str, float]:
    """1-NNA, COV and MMD (PointFlow) between generated ``[G, N, 3]`` and reference ``[R, M, 3]`` clouds."""
    gr = pairwise(gen, ref, metric)
    gg = pairwise(gen, gen, metric)
    rr = pairwise(ref, ref, metric)
    cov, mmd = coverage_mmd(gr)
    return {f"1nna_{metric}": one_nna(gg, gr, rr), f"cov_{metric}": cov, f"mmd_{metric}": mmd}
