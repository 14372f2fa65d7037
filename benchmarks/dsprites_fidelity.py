"""How close is the procedural dSprites renderer to the real data set?

Development tool, not a test: it reads real frames from outside the repository. The
320 frames (decoded from the animated GIF in the official dSprites README) are the only
pixel ground truth available offline. For every frame we search the factors (shape, scale,
orientation, and positions near the frame's centre) for the render with the best
intersection-over-union, and print the IoU distribution.

    python benchmarks/dsprites_fidelity.py --reference ../shared/reference/dsprites_gif_frames.npz
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import prange

from tinyvae._backend.numba_flags import njit_parallel
from tinyvae.datasets import dsprites as D


def load_frames(path):
    """(n, 64, 64) bool frames from the reference npz (rows bit-packed)."""
    d = np.load(path, allow_pickle=False)
    return np.unpackbits(d["frames"], axis=-1)[..., :64].astype(bool)


@njit_parallel
def _iou_all(frame, frame_area, shape, unit, cos_a, sin_a, cx, cy, radius, heart):
    """IoU of one frame (64, 64) with each candidate sprite, without drawing images."""
    n = shape.shape[0]
    out = np.zeros(n)
    for k in prange(n):
        s = shape[k]
        reach = radius[s] * unit[k] + 1.0
        i0, i1 = max(0, int(cy[k] - reach)), min(64, int(cy[k] + reach) + 1)
        j0, j1 = max(0, int(cx[k] - reach)), min(64, int(cx[k] + reach) + 1)
        area = 0
        inter = 0
        for i in range(i0, i1):
            dy = (i + 0.5 - cy[k]) / unit[k]
            for j in range(j0, j1):
                dx = (j + 0.5 - cx[k]) / unit[k]
                u = cos_a[k] * dx - sin_a[k] * dy
                v = sin_a[k] * dx + cos_a[k] * dy
                if D._inside(s, u, v, heart):
                    area += 1
                    if frame[i, j]:
                        inter += 1
        out[k] = inter / (area + frame_area - inter)
    return out


def candidates(frame, window=2):
    """All shapes, scales and orientations; positions within ``window`` of the frame's
    bounding-box centre. Returns (m, 5) full-grid classes."""
    rows, cols = np.nonzero(frame)
    centre = np.array([cols.min() + cols.max() + 1, rows.min() + rows.max() + 1]) / 2.0
    guess = np.rint((centre - 16.0) / 32.0 * 31.0).astype(int)
    px = np.arange(max(0, guess[0] - window), min(32, guess[0] + window + 1))
    py = np.arange(max(0, guess[1] - window), min(32, guess[1] + window + 1))
    grids = np.meshgrid(np.arange(3), np.arange(6), np.arange(40), px, py, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def walk_classes():
    """The (320, 5) full-grid classes of the README animation, read off its sequence:
    a heart grows, shrinks, grows, turns through 40 orientations, walks pos_y 0 -> 31,
    pos_x 0 -> 31, pos_y 31 -> 0, pos_x 31 -> 0 and shrinks; then an ellipse and a square
    grow, shrink, grow, turn and shrink. Repeated frames are the GIF's pauses."""
    rows = []

    def add(shape, scales=(5,), orientations=(0,), xs=(0,), ys=(0,)):
        for sc in scales:
            for o in orientations:
                for x in xs:
                    for y in ys:
                        rows.append((shape, sc, o, x, y))

    for shape in (2, 1, 0):
        add(shape, scales=range(6))
        add(shape, scales=range(5, -1, -1))
        add(shape, scales=range(6))
        add(shape)  # pause
        add(shape, orientations=range(1, 40))
        add(shape)  # pause
        if shape == 2:
            add(shape, ys=range(1, 32))
            add(shape, ys=(31,))
            add(shape, xs=range(1, 32), ys=(31,))
            add(shape, xs=(31,), ys=(31,))
            add(shape, xs=(31,), ys=range(30, -1, -1))
            add(shape, xs=(31,))
            add(shape, xs=range(30, -1, -1))
            add(shape)
        add(shape, scales=range(4, -1, -1))
    return np.array(rows)


def best_matches(frames):
    """For each frame: (best IoU, best classes)."""
    ious, best = [], []
    for frame in frames:
        cands = candidates(frame)
        geometry = D._sprite_geometry(cands, 64)
        scores = _iou_all(frame, int(frame.sum()), *geometry, D._RADIUS, D._HEART)
        k = int(np.argmax(scores))
        ious.append(scores[k])
        best.append(cands[k])
    return np.array(ious), np.array(best)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="../shared/reference/dsprites_gif_frames.npz",
                        help="npz with the bit-packed real frames")
    args = parser.parse_args(argv)
    frames = load_frames(args.reference)
    start = time.perf_counter()
    ious, best = best_matches(frames)
    elapsed = time.perf_counter() - start
    names = D.SHAPE_NAMES
    print(f"{len(frames)} real frames, best-match search in {elapsed:.1f} s")
    print(f"IoU  median {np.median(ious):.4f}  mean {ious.mean():.4f}  min {ious.min():.4f}")
    for q in (0.01, 0.05, 0.25):
        print(f"     {q:>4.0%} quantile {np.quantile(ious, q):.4f}")
    print(f"     frames with IoU == 1: {(ious == 1).sum()}   IoU >= 0.95: {(ious >= 0.95).sum()}")
    for s, name in enumerate(names):
        mask = best[:, 0] == s
        if mask.any():
            print(f"  {name:8s} {mask.sum():3d} frames  median {np.median(ious[mask]):.4f}"
                  f"  min {ious[mask].min():.4f}")
    if len(frames) == 320:
        walk = walk_classes()
        same = best == walk
        # Orientation 39 is orientation 0 (2 pi); count them as the same.
        same[:, 2] |= (best[:, 2] % 39) == (walk[:, 2] % 39)
        print(f"best match = the walk's factors: {same.all(axis=1).sum()} of 320 frames; "
              "per factor " + ", ".join(
                  f"{n} {c}" for n, c in zip(D.FACTOR_NAMES, same.sum(axis=0), strict=True)))
        walk_ious = np.array([
            _iou_all(f, int(f.sum()), *D._sprite_geometry(w[None], 64), D._RADIUS, D._HEART)[0]
            for f, w in zip(frames, walk, strict=True)
        ])
        print(f"IoU at the walk's own factors: median {np.median(walk_ious):.4f}"
              f"  min {walk_ious.min():.4f}")
    worst = np.argsort(ious)[:5]
    print("worst frames (index: IoU, best classes shape/scale/orientation/pos_x/pos_y):")
    for i in worst:
        print(f"  {i:3d}: {ious[i]:.4f}  {best[i].tolist()}")


if __name__ == "__main__":
    main()
