"""Batched MTCNN face detection with facenet-pytorch's P-, R- and O-nets (weights ship in
its wheel; nothing is downloaded).

facenet-pytorch's own ``detect_face`` handles one image size per call and refines every
candidate box in a Python loop; :func:`detect_faces` runs a batch of equally sized images
through the three stages with tensor ops (``roi_align`` for the candidate patches) and
refines only the best few candidates per image, which keeps the cost per image flat
without changing which face wins. Used by :mod:`.faces`.
"""
from __future__ import annotations

import math

import numpy as np

# Images whose detection copy is smaller than this on its shorter side are not worth running
# MTCNN on (its pyramid needs >= 12 px and its last stage looks at 48-px patches).
MIN_DETECT_SIDE = 24


def make_detector(device: str | None = None):
    """facenet-pytorch's MTCNN module: we use its P-, R- and O-nets (weights from its wheel)."""
    import torch
    from facenet_pytorch import MTCNN
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return MTCNN(keep_all=True, select_largest=False, device=dev).eval()


# MTCNN speed knobs. Stage thresholds are facenet-pytorch's defaults; the final one is
# ``min_prob``. A big face yields dozens of overlapping candidates; refining only the best
# few per image (facenet-pytorch refines them all, cropping each in a Python loop) keeps the
# cost per image flat without changing which face wins.
PYRAMID_FACTOR = 0.709
STAGE_THRESHOLDS = (0.6, 0.7)
KEEP_AFTER_PNET, KEEP_AFTER_RNET = 16, 4


def _top_k(b, bi, n_images: int, k: int):
    """The ``k`` highest-scoring boxes of every image."""
    import torch
    o = torch.argsort(b[:, 4], descending=True)
    o = o[torch.argsort(bi[o], stable=True)]  # grouped by image, best first within each
    counts = torch.bincount(bi[o], minlength=n_images)
    rank = torch.arange(len(o), device=b.device) - (torch.cumsum(counts, 0) - counts)[bi[o]]
    o = o[rank < k]
    return b[o], bi[o]


def _patches(x, b, bi, size: int):
    """size×size patches of boxes ``b`` (clipped to the image like facenet-pytorch), normalised."""
    import torch
    from torchvision.ops import roi_align
    h, w = x.shape[2:]
    t = b[:, :4].trunc()
    x0, y0 = t[:, 0].clamp(min=1) - 1, t[:, 1].clamp(min=1) - 1
    x1, y1 = t[:, 2].clamp(max=w), t[:, 3].clamp(max=h)
    ok = (x1 > x0) & (y1 > y0)
    rois = torch.stack([bi.to(x.dtype), x0, y0, x1, y1], 1)[ok]
    return (roi_align(x, rois, size, 1.0, -1, True) - 127.5) * 0.0078125, ok


def _mtcnn(det, x, min_size: float, min_prob: float):
    """facenet-pytorch's three MTCNN stages, batched end to end; returns (boxes N×5, image index).

    Same nets, pyramid, NMS and box regression as ``facenet_pytorch...detect_face``; the
    R-/O-net patches are cut by one ``roi_align`` call instead of a loop of interpolations.
    """
    import torch
    from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, generateBoundingBox, rerec
    from torch.nn.functional import interpolate
    from torchvision.ops import batched_nms
    n, _, h, w = x.shape
    found, scale, minl = [], 12.0 / min_size, min(h, w) * 12.0 / min_size
    while minl >= 12:  # stage 1: P-net over the pyramid
        im = (interpolate(x, size=(int(h * scale + 1), int(w * scale + 1)), mode="area") - 127.5) * 0.0078125
        reg, prob = det.pnet(im)
        b, bi = generateBoundingBox(reg, prob[:, 1], scale, STAGE_THRESHOLDS[0])
        k = batched_nms(b[:, :4], b[:, 4], bi, 0.5)
        found.append((b[k], bi[k]))
        scale, minl = scale * PYRAMID_FACTOR, minl * PYRAMID_FACTOR
    b, bi = torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found])
    k = batched_nms(b[:, :4], b[:, 4], bi, 0.7)
    b, bi = b[k], bi[k]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    b = rerec(torch.stack([b[:, 0] + b[:, 5] * bw, b[:, 1] + b[:, 6] * bh,
                           b[:, 2] + b[:, 7] * bw, b[:, 3] + b[:, 8] * bh, b[:, 4]], 1))
    b, bi = _top_k(b, bi, n, KEEP_AFTER_PNET)
    for net, size, thr in ((det.rnet, 24, STAGE_THRESHOLDS[1]), (det.onet, 48, min_prob)):
        if len(b) == 0:
            break
        patches, ok = _patches(x, b, bi, size)
        if len(patches) == 0:  # the nets' flatten cannot take an empty batch
            b, bi = b[:0], bi[:0]
            break
        out = net(patches)
        reg, score = out[0], out[-1][:, 1]
        keep = score > thr
        b = torch.cat([b[ok][keep, :4], score[keep, None]], 1)
        bi, reg = bi[ok][keep], reg[keep]
        if size == 24:
            k = batched_nms(b[:, :4], b[:, 4], bi, 0.7)
            b, bi = _top_k(rerec(bbreg(b[k], reg[k])), bi[k], n, KEEP_AFTER_RNET)
        else:
            b = bbreg(b, reg)
            k = batched_nms_numpy(b[:, :4], b[:, 4], bi, 0.7, "Min")
            b, bi = b[k], bi[k]
    return b.cpu().numpy(), bi.cpu().numpy()


def detect_faces(detector, smalls: list[np.ndarray], *, min_face: float = 0.15,
                 min_prob: float = 0.9) -> list[tuple[np.ndarray | None, float, int]]:
    """(box, prob, n_faces) for each of equally sized uint8 RGB images.

    ``box`` is the most probable face (None when no face reaches ``min_prob``), ``n_faces``
    how many faces reached it; the smallest face searched for is ``min_face`` × the shorter side.
    """
    import torch
    h, w = smalls[0].shape[:2]
    if min(h, w) < MIN_DETECT_SIDE:
        return [(None, math.nan, 0)] * len(smalls)
    dev = next(detector.parameters()).device
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(smalls)).to(dev).permute(0, 3, 1, 2).float().contiguous()
        boxes, idx = _mtcnn(detector, x, max(12.0, min_face * min(h, w)), min_prob)
    out = []
    for i in range(len(smalls)):
        mine = boxes[idx == i]
        if len(mine) == 0:
            out.append((None, math.nan, 0))
        else:
            best = int(np.argmax(mine[:, 4]))
            out.append((mine[best, :4].astype(np.float64), float(mine[best, 4]), len(mine)))
    return out
