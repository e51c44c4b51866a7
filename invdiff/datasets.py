"""Training data that installs with invdiff: bundled photographs, dead leaves, phantoms.

* ``natural-gray`` / ``natural-rgb``: patches of scikit-image's bundled
  photographs (all of them except the test images ``camera``, ``astronaut``
  and ``coffee``) mixed with procedural dead-leaves images, whose occlusion
  statistics (power-law disk sizes) reproduce the scale invariance and sharp
  edges of natural images (Lee, Mumford & Huang 2001).
* ``phantoms``: random-ellipse CT/MRI phantoms in the style of DIVal's
  ellipses data set, with smooth texture, seeded.
* any folder of images.

Everything here is generated or read from disk; nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: held out from training: the images benchmarks and the demo restore
TEST_IMAGES = ("camera", "astronaut", "coffee")

#: scikit-image photographs used for training (all bundled, none of the test images)
TRAIN_PHOTOS = (
    "brick", "grass", "gravel", "moon", "coins", "page", "text", "clock", "cell",
    "chelsea", "cat", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
    "stereo_motorcycle", "colorwheel", "logo",
)  # fmt: skip

BUILTIN = ("natural-gray", "natural-rgb", "phantoms")


def skimage_image(name: str, channels: int) -> np.ndarray:
    """A bundled scikit-image picture as float32 ``(H, W, channels)`` in [0, 1]."""
    from skimage import color, data, util

    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    img = util.img_as_float32(img)
    if img.ndim == 3 and img.shape[2] == 4:  # RGBA on white
        img = img[..., :3] * img[..., 3:] + (1 - img[..., 3:])
    if channels == 1:
        img = color.rgb2gray(img) if img.ndim == 3 else img
        img = img[..., None]
    elif img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img, dtype=np.float32)


def load_test_image(name: str, channels: int = 1, size: int | None = None) -> Tensor:
    """A held-out test image as ``(1, C, H, W)`` in [0, 1]; ``size`` takes a centred square crop."""
    if name not in TEST_IMAGES:
        raise ValueError(f"unknown test image {name!r}; choose one of {TEST_IMAGES}")
    return photo_crop(name, channels, size)


def photo_crop(name: str, channels: int = 1, size: int | None = None) -> Tensor:
    """Any bundled scikit-image photo as ``(1, C, H, W)`` in [0, 1]; ``size`` takes a centred square crop.

    Held out or not: ``load_test_image`` is the held-out images' door; validation runs on training photos.
    """
    img = skimage_image(name, channels)
    if size is not None:
        h, w = img.shape[:2]
        if size > min(h, w):
            raise ValueError(f"crop size {size} exceeds the image ({h}x{w})")
        top, left = (h - size) // 2, (w - size) // 2
        img = img[top : top + size, left : left + size]
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def dead_leaves(
    size: int, rng: np.random.Generator, channels: int = 1, r_min: float = 1.0, r_max: float | None = None,
    supersample: int = 2,
) -> np.ndarray:
    """One dead-leaves image ``(size, size, channels)``: occluding disks with radius density ~ r^-3.

    Disks are drawn front to back and each paints only pixels no nearer disk
    covers, until the image is full; rendered at ``supersample`` times the size
    and averaged down for anti-aliased edges.  Disks carry a constant colour
    plus a faint linear shading.
    """
    n = size * supersample
    r_max = (r_max or size / 2) * supersample
    r_min = r_min * supersample
    out = np.zeros((n, n, channels), np.float32)
    free = np.ones((n, n), bool)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    left = n * n
    for _ in range(20000):
        # inverse-CDF draw from p(r) ~ r^-3 on [r_min, r_max]
        u = rng.random()
        r = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
        cy, cx = rng.uniform(-r, n + r, size=2)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, n)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, n)
        if y0 >= y1 or x0 >= x1:
            continue
        sub = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        sub &= free[y0:y1, x0:x1]
        if not sub.any():
            continue
        colour = rng.random(channels).astype(np.float32)
        slope = rng.normal(0, 0.15 / max(r, 1.0), size=2).astype(np.float32)
        shade = slope[0] * (yy[y0:y1, x0:x1] - cy) + slope[1] * (xx[y0:y1, x0:x1] - cx)
        val = np.clip(colour[None, None, :] + shade[..., None], 0, 1)
        out[y0:y1, x0:x1][sub] = val[sub]
        free[y0:y1, x0:x1][sub] = False
        left -= int(sub.sum())
        if left <= 0:
            break
    return out.reshape(size, supersample, size, supersample, channels).mean(axis=(1, 3))


def ellipse_phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random-ellipse phantom ``(size, size, 1)`` in [0, 1] (DIVal ellipses style, with texture).

    A body ellipse, then 5-24 inner ellipses of random size, orientation and
    additive intensity, a smooth low-frequency texture inside the body, clipped
    to [0, 1].
    """
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)
    img = np.zeros((size, size), np.float32)

    def ellipse(cy: float, cx: float, a: float, b: float, theta: float) -> np.ndarray:
        c, s = math.cos(theta), math.sin(theta)
        u = (xx - cx) * c + (yy - cy) * s
        v = -(xx - cx) * s + (yy - cy) * c
        return (u / a) ** 2 + (v / b) ** 2 <= 1

    body = ellipse(rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(0.7, 0.95),
                   rng.uniform(0.6, 0.9), rng.uniform(0, math.pi))  # fmt: skip
    img[body] = rng.uniform(0.2, 0.5)
    for _ in range(rng.integers(5, 25)):
        r = rng.uniform(0, 0.7)
        phi = rng.uniform(0, 2 * math.pi)
        e = ellipse(r * math.sin(phi), r * math.cos(phi), rng.uniform(0.03, 0.4), rng.uniform(0.03, 0.4),
                    rng.uniform(0, math.pi))  # fmt: skip
        img[e & body] += rng.uniform(-0.3, 0.6)
    # smooth texture: a few random low-frequency cosines
    tex = np.zeros_like(img)
    for _ in range(6):
        k = rng.normal(0, 6, size=2)
        tex += math.sqrt(2 / 6) * np.cos(k[0] * xx + k[1] * yy + rng.uniform(0, 2 * math.pi))
    img += 0.03 * tex * body
    return np.clip(img, 0, 1)[..., None]


class PatchSampler:
    """Random training patches ``(B, C, P, P)`` in [0, 1] with flips and 90-degree rotations.

    Args:
        source: ``natural-gray``, ``natural-rgb``, ``phantoms`` or a folder of images.
        patch_size: side ``P`` of the square patches.
        seed: seeds every random choice (image, crop, augmentation, generated data).
        dead_leaves_fraction: share of natural patches taken from dead-leaves images.
        pool: how many procedural images (dead leaves / phantoms) to keep; a quarter
            of them are replaced by fresh ones every ``refresh`` batches.
    """

    def __init__(
        self, source: str, patch_size: int, seed: int = 0, dead_leaves_fraction: float = 0.5,
        pool: int = 256, refresh: int = 200,
    ):
        self.source = source
        self.patch_size = patch_size
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.refresh = refresh
        self.batches = 0
        self.photos: list[np.ndarray] = []
        if source in ("natural-gray", "natural-rgb"):
            self.channels = 1 if source == "natural-gray" else 3
            for name in TRAIN_PHOTOS:
                img = skimage_image(name, self.channels)
                # several scales: photographs are seen at their own scale and smaller
                for scale in (1.0, 0.7, 0.5):
                    im = _rescale(img, scale)
                    if min(im.shape[:2]) >= patch_size:
                        self.photos.append(im)
            self.generated_fraction = dead_leaves_fraction
        elif source == "phantoms":
            self.channels = 1
            self.generated_fraction = 1.0
        else:
            folder = Path(source)
            if not folder.is_dir():
                raise ValueError(f"unknown training data {source!r}: give one of {BUILTIN} or a folder of images")
            self.photos = _read_folder(folder, patch_size)
            self.channels = self.photos[0].shape[2]
            self.generated_fraction = 0.0
        self.pool = [self._make(self.rng) for _ in range(pool if self.generated_fraction > 0 else 0)]
        if self.photos:
            area = np.array([p.shape[0] * p.shape[1] for p in self.photos], float)
            self.photo_p = area / area.sum()

    def _make(self, rng: np.random.Generator) -> np.ndarray:
        """One fresh procedural image for the pool."""
        p = self.patch_size
        if self.source == "phantoms":
            # phantoms of several sizes, from one patch to twice it: some patches hold a whole
            # phantom (body outline and all) at the scale a small scan shows it, some a detail
            return ellipse_phantom(int(rng.integers(p, 2 * p + 1)), rng)
        return dead_leaves(max(2 * p, 96), rng, self.channels, r_min=float(rng.uniform(1.5, 4.0)))

    def __call__(self, batch: int) -> Tensor:
        self.batches += 1
        if self.pool and self.batches % self.refresh == 0:
            for i in self.rng.choice(len(self.pool), len(self.pool) // 4, replace=False):
                self.pool[i] = self._make(self.rng)
        p = self.patch_size
        out = np.empty((batch, p, p, self.channels), np.float32)
        for b in range(batch):
            if self.pool and (not self.photos or self.rng.random() < self.generated_fraction):
                img = self.pool[self.rng.integers(len(self.pool))]
            else:
                img = self.photos[self.rng.choice(len(self.photos), p=self.photo_p)]
            top = self.rng.integers(img.shape[0] - p + 1)
            left = self.rng.integers(img.shape[1] - p + 1)
            patch = img[top : top + p, left : left + p]
            patch = np.rot90(patch, self.rng.integers(4))
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            out[b] = patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _rescale(img: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return img
    from skimage.transform import rescale

    return rescale(img, scale, channel_axis=2, anti_aliasing=True).astype(np.float32)


def _read_folder(folder: Path, patch_size: int) -> list[np.ndarray]:
    from skimage import io, util

    exts = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in exts)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(exts))}) found under {folder}")
    imgs = []
    for f in files:
        img = util.img_as_float32(io.imread(f))
        if img.ndim == 2:
            img = img[..., None]
        img = img[..., :3]
        if min(img.shape[:2]) >= patch_size:
            imgs.append(np.ascontiguousarray(img))
    if not imgs:
        raise ValueError(f"every image under {folder} is smaller than the patch size {patch_size}")
    channels = {im.shape[2] for im in imgs}
    if len(channels) > 1:
        raise ValueError(f"images under {folder} mix gray and colour ({sorted(channels)} channels); convert them")
    return imgs
