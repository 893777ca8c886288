"""A synthetic class-incremental dataset of small objects on cluttered backgrounds (no download).

Each class is a combination of a shape (disc, square, triangle, cross, ring, diamond, bar, star),
a colour (red, green, blue; yellow, magenta, cyan are added beyond 48 classes) and a texture
(solid, stripes; dots, checker are added beyond 96 classes). Each image holds ONE object of its
class, drawn at a random position, scale and small rotation on a background of smooth random colour
fields, soft colour blobs, thin lines and pixel noise (none of the distractors is a class shape).
Each class prefers small, medium or large objects (70 % of its images), so classes differ in how
much of the image their object covers, which is what CIM's compression exploits. The tight box
around the object's pixels is known exactly (``train_boxes`` / ``test_boxes``).

Everything is a pure function of ``synthetic_seed`` and the sizes (NOT the run's "seed"), drawn
with numpy's PCG64 generator, and rendered batch-wise on coordinate grids (no per-pixel loops).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
from torchvision import transforms

from .base import IData, int_option

__all__ = ["SHAPES", "COLOURS", "TEXTURES", "SCALE_GROUPS", "max_classes", "class_specs",
           "render_objects", "make_split", "SyntheticShapes"]

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "bar", "star")
COLOURS = {  # RGB in [0, 1]
    "red": (0.86, 0.13, 0.12), "green": (0.13, 0.70, 0.18), "blue": (0.14, 0.28, 0.92),
    "yellow": (0.92, 0.84, 0.10), "magenta": (0.82, 0.16, 0.80), "cyan": (0.10, 0.80, 0.86),
}
TEXTURES = ("solid", "stripes", "dots", "checker")
# Object half-size r as a fraction of the image side, per scale group (box side is about 2r).
SCALE_GROUPS = {"small": (0.06, 0.10), "medium": (0.10, 0.17), "large": (0.17, 0.30)}
# (colours, textures) used, the smallest palette that has enough combinations for the classes.
_PALETTES = ((3, 2), (6, 2), (6, 4))
_DARK = 0.45          # brightness of the dark part of a textured object
_NOISE_STD = 0.03     # pixel noise, in [0, 1] intensity units
_MIN_RADIUS = 2.5     # pixels: every object covers at least a few pixels


def max_classes() -> int:
    """The most classes :func:`class_specs` can make (distinct shape x colour x texture)."""
    c, t = _PALETTES[-1]
    return len(SHAPES) * c * t


def class_specs(num_classes: int, seed: int) -> Dict[str, np.ndarray]:
    """What each class looks like: int64 arrays (C,) "shape", "colour", "texture", "scale_group".

    Indices point into SHAPES, COLOURS (insertion order), TEXTURES and SCALE_GROUPS. Shapes are
    spread evenly over the classes (class counts per shape differ by at most one) and every
    (shape, colour, texture) triple is distinct. Deterministic from ``seed``.
    """
    if not 1 <= num_classes <= max_classes():
        raise ValueError(f"num_classes must be in 1..{max_classes()}, got {num_classes}")
    n_col, n_tex = next(p for p in _PALETTES if len(SHAPES) * p[0] * p[1] >= num_classes)
    rng = np.random.default_rng([seed, 1])
    n_shapes, n_pairs = len(SHAPES), n_col * n_tex
    pair_perm = np.stack([rng.permutation(n_pairs) for _ in range(n_shapes)])  # (shapes, pairs)
    j = np.arange(num_classes)
    shape = j % n_shapes
    pair = pair_perm[shape, j // n_shapes]
    order = rng.permutation(num_classes)  # so that class k's shape is not simply k % 8
    scale_group = rng.permutation(np.arange(num_classes) % len(SCALE_GROUPS))
    return {"shape": shape[order].astype(np.int64), "colour": (pair % n_col)[order].astype(np.int64),
            "texture": (pair // n_col)[order].astype(np.int64), "scale_group": scale_group.astype(np.int64)}


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of one shape in object coordinates (u, v): unit disc = extent; bool, same shape as u."""
    au, av = np.abs(u), np.abs(v)
    name = SHAPES[shape]
    if name == "disc":
        return u * u + v * v <= 1.0
    if name == "ring":
        rho2 = u * u + v * v
        return (rho2 <= 1.0) & (rho2 >= 0.55 ** 2)
    if name == "square":
        return np.maximum(au, av) <= 0.7
    if name == "diamond":
        return au + av <= 1.0
    if name == "triangle":  # equilateral, apex up, inscribed in the unit circle
        return (v <= 0.5) & (au <= (v + 1.0) * (0.866 / 1.5))
    if name == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if name == "bar":
        return (av <= 0.3) & (au <= 0.95)
    if name == "star":  # five points, one pointing up
        phi = np.arctan2(u, -v)
        return np.sqrt(u * u + v * v) <= 0.4 + 0.6 * ((1.0 + np.cos(5.0 * phi)) / 2.0) ** 3
    raise AssertionError(name)


def _texture_factor(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness factor (B, S, S) of each texture in object coordinates: 1 or _DARK."""
    factor = np.ones(u.shape, np.float32)
    for t in np.unique(texture):  # one vectorised pattern per texture kind (<= 4), not per image
        sel = texture == t
        uu, vv = u[sel], v[sel]
        if TEXTURES[t] == "solid":
            continue
        if TEXTURES[t] == "stripes":
            dark = np.floor((uu + vv) * 2.2) % 2 == 1
        elif TEXTURES[t] == "dots":
            fu, fv = (uu * 2.5) % 1.0 - 0.5, (vv * 2.5) % 1.0 - 0.5
            dark = fu * fu + fv * fv < 0.09
        else:  # checker
            dark = (np.floor(uu * 2.5) + np.floor(vv * 2.5)) % 2 == 1
        factor[sel] = np.where(dark, _DARK, 1.0)
    return factor


def _backgrounds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Cluttered backgrounds float32 (n, S, S, 3) in [0, 1]: smooth colour field, soft blobs, thin lines."""
    S = size
    pos = np.arange(S, dtype=np.float32) + 0.5  # pixel centres
    # smooth field: a 4x4 grid of random colours, bilinearly interpolated, half desaturated
    g = 4
    t = pos / S * (g - 1)
    i0 = np.minimum(np.floor(t).astype(np.int64), g - 2)
    w = (t - i0).astype(np.float32)
    interp = np.zeros((S, g), np.float32)
    interp[np.arange(S), i0] = 1.0 - w
    interp[np.arange(S), i0 + 1] = w
    low = rng.uniform(0.1, 0.9, size=(n, g, g, 3)).astype(np.float32)
    bg = np.einsum("yi,nijc,xj->nyxc", interp, low, interp, optimize=True)
    bg = 0.5 * bg + 0.5 * bg.mean(axis=3, keepdims=True)
    ys, xs = pos[None, None, :, None], pos[None, None, None, :]  # (1, 1, S, 1), (1, 1, 1, S)
    # soft Gaussian blobs (no hard edge, so never a class shape)
    k = 3
    centre = rng.uniform(0, S, size=(n, k, 2)).astype(np.float32)
    sigma = (rng.uniform(0.04, 0.12, size=(n, k)) * S).astype(np.float32)
    colour = rng.uniform(0, 1, size=(n, k, 3)).astype(np.float32)
    alpha_max = rng.uniform(0.3, 0.8, size=(n, k)).astype(np.float32)
    inv = 1.0 / (2.0 * sigma[..., None] ** 2)  # the Gaussian is separable: exp(-dx^2 c) * exp(-dy^2 c)
    gx = np.exp(-((pos - centre[..., 0, None]) ** 2) * inv)  # (n, k, S)
    gy = np.exp(-((pos - centre[..., 1, None]) ** 2) * inv) * alpha_max[..., None]
    alpha = gy[..., :, None] * gx[..., None, :]  # (n, k, S, S)
    bg = np.ascontiguousarray(bg.transpose(0, 3, 1, 2))  # (n, 3, S, S) while compositing
    for j in range(k):  # "over" compositing in order, k = 3 layers, each vectorised over images/pixels
        layer = colour[:, j, :, None, None] - bg
        layer *= alpha[:, j, None]
        bg += layer
    # thin straight line segments (width about 1-1.6 px)
    k = 3
    p0 = rng.uniform(0, S, size=(n, k, 2)).astype(np.float32)
    p1 = rng.uniform(0, S, size=(n, k, 2)).astype(np.float32)
    width = rng.uniform(0.9, 1.6, size=(n, k)).astype(np.float32)
    colour = rng.uniform(0, 1, size=(n, k, 3)).astype(np.float32)
    d = p1 - p0
    dx, dy = d[..., 0, None, None], d[..., 1, None, None]
    rx, ry = xs - p0[..., 0, None, None], ys - p0[..., 1, None, None]
    tt = np.clip((rx * dx + ry * dy) / np.maximum(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    dist2 = (rx - tt * dx) ** 2 + (ry - tt * dy) ** 2  # (n, k, S, S)
    on_line = dist2 <= (width[..., None, None] / 2.0) ** 2  # (n, k, S, S)
    for j in range(k):  # painted in order (k = 3), each vectorised over images and pixels
        bg = np.where(on_line[:, j, None], colour[:, j, :, None, None], bg)  # (n, 3, S, S)
    return np.ascontiguousarray(bg.transpose(0, 2, 3, 1))


def render_objects(targets: np.ndarray, specs: Dict[str, np.ndarray], image_size: int,
                   rng: np.random.Generator, return_backgrounds: bool = False) -> Dict[str, np.ndarray]:
    """Draw one image per target: its class's object at a random place/scale on a cluttered background.

    Args:
        targets: int (N,) class indices into ``specs`` (from :func:`class_specs`).
        image_size: side S of the square images, in pixels (>= 16).
        rng: the generator all randomness is drawn from (same state -> same images).
        return_backgrounds: also return what each image looks like without its object.
    Returns:
        dict with "images" uint8 (N, S, S, 3); "boxes" int64 (N, 4) = tight (x0, y0, x1, y1) box of
        the object's pixels, x1/y1 exclusive; "masks" bool (N, S, S), True on object pixels; and,
        if asked, "backgrounds" uint8 (N, S, S, 3), equal to "images" wherever "masks" is False.
    """
    targets = np.asarray(targets, dtype=np.int64)
    n, S = len(targets), int(image_size)
    shape = specs["shape"][targets]
    colour_idx = specs["colour"][targets]
    texture = specs["texture"][targets]
    group = specs["scale_group"][targets]

    bg = _backgrounds(rng, n, S)
    # object scale: 70 % from the class's scale group, else anywhere in the full range
    bounds = np.array(list(SCALE_GROUPS.values()), np.float64)  # (groups, 2)
    lo, hi = bounds[group, 0], bounds[group, 1]
    own = rng.uniform(size=n) < 0.7
    frac = np.where(own, rng.uniform(lo, hi), rng.uniform(bounds[0, 0], bounds[-1, 1], size=n))
    r = np.clip(frac * S, _MIN_RADIUS, S / 2.0 - 1.5)
    cx = rng.uniform(r + 1.0, S - r - 1.0)
    cy = rng.uniform(r + 1.0, S - r - 1.0)
    theta = rng.uniform(-0.35, 0.35, size=n)  # radians, about +-20 degrees
    palette = np.array(list(COLOURS.values()), np.float64)
    colour = palette[colour_idx] * rng.uniform(0.8, 1.1, size=(n, 1)) + rng.normal(0, 0.04, size=(n, 3))
    colour = np.clip(colour, 0.0, 1.0).astype(np.float32)
    noise = rng.standard_normal(size=(n, S, S, 3), dtype=np.float32) * np.float32(_NOISE_STD)

    pos = np.arange(S, dtype=np.float32) + 0.5
    dx = pos[None, None, :] - cx[:, None, None].astype(np.float32)  # (n, 1, S)
    dy = pos[None, :, None] - cy[:, None, None].astype(np.float32)  # (n, S, 1)
    c = (np.cos(theta) / r).astype(np.float32)[:, None, None]  # rotation and 1/r scale in one
    s = (np.sin(theta) / r).astype(np.float32)[:, None, None]
    u = dx * c + dy * s  # (n, S, S) float32 object coordinates, unit disc = object extent
    v = dy * c - dx * s
    masks = np.zeros((n, S, S), bool)
    for k in np.unique(shape):  # one vectorised test per shape kind (<= 8), not per image
        sel = shape == k
        masks[sel] = _shape_mask(int(k), u[sel], v[sel])
    empty = ~masks.any(axis=(1, 2))  # cannot happen with _MIN_RADIUS, but never return an empty box
    if empty.any():
        masks[empty, cy[empty].astype(np.int64), cx[empty].astype(np.int64)] = True

    obj = colour[:, None, None, :] * _texture_factor(texture, u, v)[..., None]
    bg_noisy = np.clip(bg + noise, 0.0, 1.0)
    images = np.where(masks[..., None], np.clip(obj + noise, 0.0, 1.0), bg_noisy)
    images = np.round(images * 255.0).astype(np.uint8)

    cols, rows = masks.any(axis=1), masks.any(axis=2)  # (n, S) each
    x0, y0 = cols.argmax(axis=1), rows.argmax(axis=1)
    x1, y1 = S - cols[:, ::-1].argmax(axis=1), S - rows[:, ::-1].argmax(axis=1)
    out = {"images": images, "boxes": np.stack([x0, y0, x1, y1], axis=1).astype(np.int64), "masks": masks}
    if return_backgrounds:
        out["backgrounds"] = np.round(bg_noisy * 255.0).astype(np.uint8)
    return out


def make_split(num_classes: int, per_class: int, image_size: int, seed: int, split: int,
               return_masks: bool = False) -> Dict[str, np.ndarray]:
    """All images of one split, sorted by class: dict "images" uint8 (N,S,S,3), "targets" int64 (N,),
    "boxes" int64 (N,4) (x0,y0,x1,y1, exclusive), and "masks" bool (N,S,S) if ``return_masks``.

    N = num_classes * per_class. ``split`` (0 train, 1 test) selects an independent random stream,
    so the test set does not change with the number of training images. Rendered in chunks whose
    size depends only on ``image_size`` (bounded memory; same result for the same arguments).
    """
    specs = class_specs(num_classes, seed)
    targets = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    chunk = max(16, (1 << 20) // (image_size * image_size))
    parts = []
    for i, start in enumerate(range(0, len(targets), chunk)):
        rng = np.random.default_rng([seed, 2 + split, i])
        parts.append(render_objects(targets[start:start + chunk], specs, image_size, rng))
    keys = ("images", "boxes") + (("masks",) if return_masks else ())
    out = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    out["targets"] = targets
    return out


class SyntheticShapes(IData):
    """Dataset "synthetic": shape x colour x texture classes of small objects on clutter (see module doc).

    In-memory uint8 images (``use_path`` False), true object boxes, square ``image_size``.
    Config keys (defaults): synthetic_image_size 64, synthetic_num_classes 20,
    synthetic_train_per_class 100, synthetic_test_per_class 20, synthetic_seed 0.
    """

    name = "synthetic"
    use_path = False
    option_keys = ("synthetic_image_size", "synthetic_num_classes", "synthetic_train_per_class",
                   "synthetic_test_per_class", "synthetic_seed")

    def __init__(self, image_size: int = 64, num_classes: int = 20, train_per_class: int = 100,
                 test_per_class: int = 20, seed: int = 0) -> None:
        super().__init__()
        opts = {"synthetic_image_size": image_size, "synthetic_num_classes": num_classes,
                "synthetic_train_per_class": train_per_class, "synthetic_test_per_class": test_per_class,
                "synthetic_seed": seed}
        self.size = int_option(opts, "synthetic_image_size", 64, 16, 1024)
        self.n_classes = int_option(opts, "synthetic_num_classes", 20, 1, max_classes())
        self.train_per_class = int_option(opts, "synthetic_train_per_class", 100, 1)
        self.test_per_class = int_option(opts, "synthetic_test_per_class", 20, 1)
        self.seed = int_option(opts, "synthetic_seed", 0, 0)
        self.image_size: Tuple[int, int] = (self.size, self.size)
        self.class_order = list(range(self.n_classes))
        S = self.size
        self.train_trsf = [transforms.RandomCrop(S, padding=S // 8), transforms.RandomHorizontalFlip(),
                           transforms.ToTensor()]
        self.test_trsf = [transforms.ToTensor()]
        self.common_trsf = [transforms.Normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))]

    @classmethod
    def from_options(cls, options: Dict[str, Any]) -> "SyntheticShapes":
        """Build from a run config (reads only the synthetic_* keys; missing keys take the defaults)."""
        return cls(image_size=options.get("synthetic_image_size", 64),
                   num_classes=options.get("synthetic_num_classes", 20),
                   train_per_class=options.get("synthetic_train_per_class", 100),
                   test_per_class=options.get("synthetic_test_per_class", 20),
                   seed=options.get("synthetic_seed", 0))

    def specs(self) -> Dict[str, np.ndarray]:
        """Per-class shape/colour/texture/scale-group indices, see :func:`class_specs`."""
        return class_specs(self.n_classes, self.seed)

    @property
    def class_names(self) -> list:
        """List (C,) of readable class names, e.g. "red-stripes-disc (small)" (colour-texture-shape (scale
        group)); a property, so it reads like the ``class_names`` list of every dataset object."""
        sp, cols, groups = self.specs(), list(COLOURS), list(SCALE_GROUPS)
        return [f"{cols[c]}-{TEXTURES[t]}-{SHAPES[s]} ({groups[g]})"
                for s, c, t, g in zip(sp["shape"], sp["colour"], sp["texture"], sp["scale_group"])]

    def download_data(self) -> None:
        """Render both splits (no download); sets data, targets, boxes and the Normalize statistics."""
        train = make_split(self.n_classes, self.train_per_class, self.size, self.seed, split=0)
        test = make_split(self.n_classes, self.test_per_class, self.size, self.seed, split=1)
        self.train_data, self.train_targets, self.train_boxes = train["images"], train["targets"], train["boxes"]
        self.test_data, self.test_targets, self.test_boxes = test["images"], test["targets"], test["boxes"]
        sample = self.train_data[:: max(1, len(self.train_data) // 512)].reshape(-1, 3) / 255.0
        mean, std = sample.mean(axis=0), np.maximum(sample.std(axis=0), 1e-3)
        self.common_trsf = [transforms.Normalize(mean=tuple(float(m) for m in mean),
                                                 std=tuple(float(s) for s in std))]
