"""A small z-buffer rasterizer in torch for shaded meshes and coloured point clouds.

No system library, runs on any torch device. Triangles are rasterized by
testing the pixels of each triangle's bounding box (vectorised over all
triangles), depth-tested with ``scatter_reduce(amin)``; points are splatted as
small discs. Images are rendered at ``ssaa`` times the size and box-filtered
down, which removes jagged edges.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cdm3d.render.camera import Camera

AMBIENT, DIFFUSE = 0.35, 0.65
_MAX_CANDIDATES = 6_000_000  # pixel-triangle pairs per chunk, to bound memory


def _background(size: int, bg: tuple[float, float, float], device: torch.device) -> torch.Tensor:
    return torch.tensor(bg, dtype=torch.float32, device=device).view(1, 1, 3).expand(size, size, 3).clone()


def _face_shading(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera) -> torch.Tensor:
    tri = vertices[faces]
    normals = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)
    light = camera.light_direction().to(vertices)
    # Two-sided: a face seen from behind is lit as if its normal faced the camera.
    to_cam = camera.eye().to(vertices) - tri.mean(1)
    flip = torch.where((normals * to_cam).sum(1, keepdim=True) < 0, -1.0, 1.0)
    return AMBIENT + DIFFUSE * ((normals * flip) @ light).clamp_min(0)


def _raster_chunk(px, depth, faces, size):
    """Candidate pixels of ``faces``: (face index, pixel index, depth, barycentrics)."""
    tri = px[faces]  # [F, 3, 2]
    lo = tri.min(1).values.floor().clamp(0, size - 1).long()
    hi = tri.max(1).values.ceil().clamp(0, size - 1).long()
    width, height = (hi - lo + 1).unbind(1)
    counts = width * height
    total = int(counts.sum())
    if total == 0:
        return None
    face_id = torch.repeat_interleave(torch.arange(len(faces), device=px.device), counts)
    start = torch.cumsum(counts, 0) - counts
    k = torch.arange(total, device=px.device) - start[face_id]
    x = lo[face_id, 0] + k % width[face_id]
    y = lo[face_id, 1] + k // width[face_id]
    p = torch.stack([x, y], 1).to(px.dtype) + 0.5
    a, b, c = tri[face_id, 0], tri[face_id, 1], tri[face_id, 2]

    def edge(u, v, w):
        return (v[:, 0] - u[:, 0]) * (w[:, 1] - u[:, 1]) - (v[:, 1] - u[:, 1]) * (w[:, 0] - u[:, 0])

    area = edge(a, b, c)
    w0, w1, w2 = edge(b, c, p), edge(c, a, p), edge(a, b, p)
    sign = torch.sign(area)
    inside = (w0 * sign >= 0) & (w1 * sign >= 0) & (w2 * sign >= 0) & (area.abs() > 1e-12)
    bary = torch.stack([w0, w1, w2], 1)[inside] / area[inside, None]
    fid = face_id[inside]
    d = (bary * depth[faces[fid]]).sum(1)
    pix = y[inside] * size + x[inside]
    return fid, pix, d, bary


def render_mesh(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    colors: torch.Tensor,
    camera: Camera | None = None,
    size: int = 128,
    bg: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ssaa: int = 2,
) -> torch.Tensor:
    """A shaded image ``[size, size, 3]`` in [0, 1].

    Args:
        vertices: ``[V, 3]`` world positions.
        faces: ``[F, 3]`` vertex indices.
        colors: ``[F, 3]`` face colours or ``[V, 3]`` vertex colours, in [0, 1].
    """
    camera = camera or Camera()
    vertices = vertices.float()
    faces = faces.long()
    full = size * ssaa
    image = _background(full, bg, vertices.device).view(-1, 3)
    px, depth = camera.project(vertices, full)
    visible = (depth[faces] > 1e-3).all(1)
    faces_v = faces[visible]
    shade = _face_shading(vertices, faces_v, camera)
    per_vertex = colors.shape[0] == vertices.shape[0] and colors.shape[0] != faces.shape[0]
    face_colors = None if per_vertex else colors[visible].float()
    zbuf = torch.full((full * full,), float("inf"), device=vertices.device)
    results = []
    # Chunk the triangles so the pixel-triangle candidates stay bounded.
    tri = px[faces_v]
    box = (tri.max(1).values - tri.min(1).values + 2).clamp_min(1).prod(1)
    chunk_ids = torch.div(torch.cumsum(box, 0), _MAX_CANDIDATES, rounding_mode="floor").long()
    for chunk in torch.unique(chunk_ids):
        idx = torch.nonzero(chunk_ids == chunk).squeeze(1)
        res = _raster_chunk(px, depth, faces_v[idx], full)
        if res is None:
            continue
        fid, pix, d, bary = res
        fid = idx[fid]
        zbuf.scatter_reduce_(0, pix, d, reduce="amin")
        results.append((fid, pix, d, bary))
    for fid, pix, d, bary in results:
        win = d <= zbuf[pix]
        fid, pix, bary = fid[win], pix[win], bary[win]
        rgb = (bary[:, :, None] * colors[faces_v[fid]].float()).sum(1) if per_vertex else face_colors[fid]
        image[pix] = (rgb * shade[fid, None]).clamp(0, 1)
    image = image.view(full, full, 3)
    if ssaa > 1:
        image = F.avg_pool2d(image.permute(2, 0, 1)[None], ssaa)[0].permute(1, 2, 0)
    return image


def render_points(
    points: torch.Tensor,
    colors: torch.Tensor,
    camera: Camera | None = None,
    size: int = 128,
    radius: float = 1.5,
    bg: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ssaa: int = 2,
) -> torch.Tensor:
    """Coloured points ``[N, 3]`` (colours ``[N, 3]`` in [0, 1]) splatted as discs of ``radius`` pixels."""
    camera = camera or Camera()
    points = points.float()
    full = size * ssaa
    image = _background(full, bg, points.device).view(-1, 3)
    px, depth = camera.project(points, full)
    r = max(radius * ssaa, 0.5)
    span = torch.arange(-int(r), int(r) + 1, device=points.device)
    dy, dx = torch.meshgrid(span, span, indexing="ij")
    disc = (dx**2 + dy**2) <= r * r + 1e-6
    offsets = torch.stack([dx[disc], dy[disc]], 1)
    centre = px.floor().long()
    pix_xy = centre[:, None, :] + offsets[None]
    ok = (pix_xy >= 0).all(2) & (pix_xy < full).all(2) & (depth[:, None] > 1e-3)
    pid = torch.arange(len(points), device=points.device)[:, None].expand_as(ok)[ok]
    pix = pix_xy[..., 1][ok] * full + pix_xy[..., 0][ok]
    d = depth[pid]
    zbuf = torch.full((full * full,), float("inf"), device=points.device)
    zbuf.scatter_reduce_(0, pix, d, reduce="amin")
    win = d <= zbuf[pix]
    # A little depth cue: nearer points slightly brighter.
    dn = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-6)
    shade = 1.0 - 0.35 * dn
    image[pix[win]] = (colors[pid[win]].float() * shade[pid[win], None]).clamp(0, 1)
    image = image.view(full, full, 3)
    if ssaa > 1:
        image = F.avg_pool2d(image.permute(2, 0, 1)[None], ssaa)[0].permute(1, 2, 0)
    return image
