"""Synthetic but structured training data for the two example models (generator ``v1``).

The two example models of relcert stand in for the models of an image-vectorisation service:
a *routing classifier* that picks a vectorisation method from 15 image features, and a
*quality predictor* that predicts the output quality of a vectoriser from its 10 optimisation
parameters. No real data set ships with the project, so both are trained on data drawn from
the generative processes documented here. Everything is numpy only and fully determined by the
``numpy.random.Generator`` passed in (the build derives it from the model name and the snapshot
date, see :func:`pipeline.build.seeds.model_seed`).

The identifier of this generator, recorded in ``model_info.json`` as
``training_data.generator``, is :data:`GENERATOR_ID` (``pipeline.build.synthetic/v1``). Any
change to the process below must bump it.

Routing data: :func:`sample_routing`
====================================

Each row describes one input image. Rows are independent; within a row the features are
correlated through latent variables:

``kind``
    the kind of image, drawn with probabilities logo 0.25, line_art 0.25, illustration 0.30,
    photo 0.20.
``detail`` (d)
    how much detail the image holds, ``Beta(a, b)`` per kind: logo (2, 5), line_art (3, 3),
    illustration (4, 3), photo (6, 2).
``text``, ``gradients``
    Bernoulli per kind, probability of text: logo 0.55, line_art 0.15, illustration 0.35,
    photo 0.10; of colour gradients: logo 0.35, line_art 0.05, illustration 0.50, photo 0.90.
``colours``
    the number of distinct colours: logo ``1 + Binomial(5, 0.35)``, line_art
    ``1 + Binomial(3, 0.25)``, illustration ``4 + Poisson(4 + 8 d)``, photo
    ``16 + Poisson(32)``; an image with gradients gets ``4 + Poisson(6)`` more.

The 15 features (all float32, in this order, :data:`ROUTING_FEATURES`), with ``clip`` to the
stated range and ``N(m, s)`` a normal draw:

==  ===========================  =========  ====================================================
 #  name                         range      generated as
==  ===========================  =========  ====================================================
 0  complexity_score             0-1        ``clip(0.10 + 0.75 d + 0.10 text + N(0, 0.05))``
 1  color_count_norm             0-1        ``min(colours, 16) / 16`` (multiples of 1/16)
 2  has_text                     0/1        ``text``
 3  has_gradients                0/1        ``gradients``
 4  edge_density                 0-1        ``clip(base_k + 0.35 d + N(0, 0.05))``, base_k: logo
                                            0.15, line_art 0.35, illustration 0.20, photo 0.30
 5  noise_level                  0-1        photo ``Beta(5, 3)``, other kinds ``Beta(1.2, 12)``
 6  contrast                     0-1        ``Beta`` per kind: logo (6, 2), line_art (8, 2),
                                            illustration (4, 3), photo (3, 3)
 7  sharpness                    0-1        ``clip(0.95 - 0.6 noise_level - 0.15 [photo]
                                            + N(0, 0.05))``
 8  transparency_fraction        0-1        with probability logo 0.6, line_art 0.2,
                                            illustration 0.3, photo 0: ``Beta(2, 4)``, else 0
 9  dominant_color_fraction      0-1        ``Beta`` per kind: logo (5, 3), line_art (8, 2),
                                            illustration (3, 4), photo (1.5, 6)
10  line_art_score               0-1        ``Beta`` per kind: logo (3, 4), line_art (8, 2),
                                            illustration (2, 5), photo (1, 8)
11  photo_likelihood             0-1        ``Beta`` per kind: logo (1, 10), line_art (1, 12),
                                            illustration (2, 7), photo (8, 2.5)
12  aspect_ratio_log             -2 to 2    ``log2(width / height)``: ``clip(N(m_k, s_k))``,
                                            logo (0, 0.2), photo (0.4, 0.3), others (0, 0.35)
13  size_log_norm                0-1        ``(log2(pixels) - 12) / 12``: ``Beta`` per kind,
                                            logo (2, 5), photo (6, 3), others (3, 3)
14  unique_shape_count_norm      0-1        ``min(Poisson(lambda_k) / 400, 1)``, lambda_k: logo
                                            5 + 20 d, line_art 20 + 80 d, illustration
                                            30 + 150 d, photo 150 + 300 d
==  ===========================  =========  ====================================================

The label (:data:`ROUTING_CLASSES`) is a deterministic function of the *observed* features,
the first matching rule wins:

1. ``fallback`` -- noisy photographic content: ``photo_likelihood + noise_level >= 1.0``;
2. ``hybrid`` -- text over gradients: ``has_text == 1 and has_gradients == 1``;
3. ``potrace`` -- low-colour line art: ``colours <= 4`` (``color_count_norm <= 0.25``) and
   ``has_gradients == 0`` and ``line_art_score >= 0.4``;
4. ``vtracer_optimized`` -- everything else (multi-colour flat logos and illustrations).

Then :data:`ROUTING_LABEL_NOISE` (1 %) of the labels are replaced by a different class drawn
uniformly, so no model can exceed about 99 % accuracy; the example MLP reaches 97-99 %.
Class frequencies are roughly vtracer_optimized 38 %, potrace 32 %, hybrid 10 %,
fallback 20 %.

Quality data: :func:`sample_quality`
====================================

Each row is one set of vectoriser parameters (named after vtracer's), each scaled to [0, 1]
from its raw range, in this order (:data:`QUALITY_FEATURES`):

==  ==================  ===================================  =================================
 #  name                raw range                            scaled as
==  ==================  ===================================  =================================
 0  color_precision     integer 1-8 (bits per channel)       ``(v - 1) / 7``
 1  layer_difference    integer 0-128                        ``v / 128``
 2  corner_threshold    0-180 degrees                        ``v / 180``
 3  length_threshold    3.5-10 px                            ``(v - 3.5) / 6.5``
 4  max_iterations      integer 1-20                         ``(v - 1) / 19``
 5  splice_threshold    0-180 degrees                        ``v / 180``
 6  filter_speckle      integer 0-16 px                      ``v / 16``
 7  path_precision      integer 1-10                         ``(v - 1) / 9``
 8  mode_spline         0 (polygon) / 1 (spline)             as is
 9  hierarchical        0 (cutout) / 1 (stacked)             as is
==  ==================  ===================================  =================================

The parameters are not independent: a latent *effort* ``e ~ U(0, 1)`` (how much compute the
optimiser was willing to spend) drives ``color_precision``, ``max_iterations`` and
``path_precision``, each drawn as ``clip(0.55 e + 0.45 u)`` with ``u ~ U(0, 1)`` before
rounding to its integer grid; ``mode_spline`` is 1 with probability ``0.3 + 0.5 e``;
the others are uniform over their raw range (``hierarchical`` is 1 with probability 0.5).

The target quality, with ``x`` the scaled parameters by name, is::

    z = 1.6 * cp * (1.4 - cp)                      # more colour precision helps, saturating
      - 1.2 * (ld - 0.3) ** 2                      # layer difference has a sweet spot at 0.3
      + 0.8 * pp * (1 - 0.5 * ct)                  # path precision, less useful at high corner thr.
      - 0.7 * lt * fs                              # long segments + speckle filter lose detail
      + 0.5 * spline * (1 - ct)                    # splines pay off with a low corner threshold
      + 0.45 * tanh(3 * (mi - 0.25))               # iterations help, then saturate
      + 0.3 * hier * cp                            # stacking helps rich palettes
      - 0.4 * st ** 2                              # aggressive splicing hurts
    quality = clip(sigmoid(2.2 * (z - 0.75)) + N(0, 0.02), 0, 1)

(cp color_precision, ld layer_difference, ct corner_threshold, lt length_threshold,
mi max_iterations, st splice_threshold, fs filter_speckle, pp path_precision,
spline mode_spline, hier hierarchical). The noise caps the attainable Pearson correlation
at about 0.997; the example MLP reaches about 0.99 on the holdout split.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "GENERATOR_ID",
    "IMAGE_KINDS",
    "QUALITY_FEATURES",
    "QUALITY_NOISE_SD",
    "ROUTING_CLASSES",
    "ROUTING_FEATURES",
    "ROUTING_LABEL_NOISE",
    "routing_rule",
    "sample_quality",
    "sample_quality_inputs",
    "sample_routing",
    "sample_routing_inputs",
]

GENERATOR_ID = "pipeline.build.synthetic/v1"

ROUTING_CLASSES: tuple[str, ...] = ("vtracer_optimized", "potrace", "hybrid", "fallback")

ROUTING_FEATURES: tuple[str, ...] = (
    "complexity_score",
    "color_count_norm",
    "has_text",
    "has_gradients",
    "edge_density",
    "noise_level",
    "contrast",
    "sharpness",
    "transparency_fraction",
    "dominant_color_fraction",
    "line_art_score",
    "photo_likelihood",
    "aspect_ratio_log",
    "size_log_norm",
    "unique_shape_count_norm",
)

QUALITY_FEATURES: tuple[str, ...] = (
    "color_precision",
    "layer_difference",
    "corner_threshold",
    "length_threshold",
    "max_iterations",
    "splice_threshold",
    "filter_speckle",
    "path_precision",
    "mode_spline",
    "hierarchical",
)

IMAGE_KINDS: tuple[str, ...] = ("logo", "line_art", "illustration", "photo")
_KIND_P = np.array([0.25, 0.25, 0.30, 0.20])

ROUTING_LABEL_NOISE = 0.01
QUALITY_NOISE_SD = 0.02

# Per-kind parameters, indexed by kind (logo, line_art, illustration, photo).
_DETAIL_AB = np.array([[2, 5], [3, 3], [4, 3], [6, 2]], dtype=float)
_P_TEXT = np.array([0.55, 0.15, 0.35, 0.10])
_P_GRADIENT = np.array([0.35, 0.05, 0.50, 0.90])
_EDGE_BASE = np.array([0.15, 0.35, 0.20, 0.30])
_CONTRAST_AB = np.array([[6, 2], [8, 2], [4, 3], [3, 3]], dtype=float)
_P_TRANSPARENT = np.array([0.6, 0.2, 0.3, 0.0])
_DOMINANT_AB = np.array([[5, 3], [8, 2], [3, 4], [1.5, 6]], dtype=float)
_LINE_ART_AB = np.array([[3, 4], [8, 2], [2, 5], [1, 8]], dtype=float)
_PHOTO_AB = np.array([[1, 10], [1, 12], [2, 7], [8, 2.5]], dtype=float)
_ASPECT_MS = np.array([[0.0, 0.2], [0.0, 0.35], [0.0, 0.35], [0.4, 0.3]])
_SIZE_AB = np.array([[2, 5], [3, 3], [3, 3], [6, 3]], dtype=float)
_SHAPES_LAMBDA = np.array([[5, 20], [20, 80], [30, 150], [150, 300]], dtype=float)

_LOGO, _LINE_ART, _ILLUSTRATION, _PHOTO = range(4)


def _beta(rng: np.random.Generator, ab: np.ndarray, kind: np.ndarray) -> np.ndarray:
    return rng.beta(ab[kind, 0], ab[kind, 1])


def _colour_count(
    rng: np.random.Generator, kind: np.ndarray, detail: np.ndarray, gradients: np.ndarray
) -> np.ndarray:
    n = kind.shape[0]
    count = np.empty(n, dtype=np.int64)
    logo, line, ill, photo = (kind == k for k in range(4))
    count[logo] = 1 + rng.binomial(5, 0.35, size=int(logo.sum()))
    count[line] = 1 + rng.binomial(3, 0.25, size=int(line.sum()))
    count[ill] = 4 + rng.poisson(4 + 8 * detail[ill])
    count[photo] = 16 + rng.poisson(32, size=int(photo.sum()))
    count += gradients * (4 + rng.poisson(6, size=n))
    return count


def _sample_routing_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32, n x 15) and the true colour counts (int64) of n images."""
    kind = rng.choice(4, size=n, p=_KIND_P)
    detail = _beta(rng, _DETAIL_AB, kind)
    text = (rng.random(n) < _P_TEXT[kind]).astype(np.int64)
    gradients = (rng.random(n) < _P_GRADIENT[kind]).astype(np.int64)
    colours = _colour_count(rng, kind, detail, gradients)
    photo = (kind == _PHOTO).astype(float)

    noise_level = np.where(kind == _PHOTO, rng.beta(5, 3, size=n), rng.beta(1.2, 12, size=n))
    transparent = rng.random(n) < _P_TRANSPARENT[kind]
    aspect = rng.normal(_ASPECT_MS[kind, 0], _ASPECT_MS[kind, 1])
    shapes = rng.poisson(_SHAPES_LAMBDA[kind, 0] + _SHAPES_LAMBDA[kind, 1] * detail)

    x = np.empty((n, len(ROUTING_FEATURES)), dtype=np.float64)
    x[:, 0] = np.clip(0.10 + 0.75 * detail + 0.10 * text + rng.normal(0, 0.05, n), 0, 1)
    x[:, 1] = np.minimum(colours, 16) / 16.0
    x[:, 2] = text
    x[:, 3] = gradients
    x[:, 4] = np.clip(_EDGE_BASE[kind] + 0.35 * detail + rng.normal(0, 0.05, n), 0, 1)
    x[:, 5] = noise_level
    x[:, 6] = _beta(rng, _CONTRAST_AB, kind)
    x[:, 7] = np.clip(0.95 - 0.6 * noise_level - 0.15 * photo + rng.normal(0, 0.05, n), 0, 1)
    x[:, 8] = np.where(transparent, rng.beta(2, 4, size=n), 0.0)
    x[:, 9] = _beta(rng, _DOMINANT_AB, kind)
    x[:, 10] = _beta(rng, _LINE_ART_AB, kind)
    x[:, 11] = _beta(rng, _PHOTO_AB, kind)
    x[:, 12] = np.clip(aspect, -2, 2)
    x[:, 13] = _beta(rng, _SIZE_AB, kind)
    x[:, 14] = np.minimum(shapes / 400.0, 1.0)
    return x.astype(np.float32), colours


def routing_rule(x: np.ndarray) -> np.ndarray:
    """The noiseless routing label (index into ROUTING_CLASSES) of feature rows ``x``."""
    x = np.asarray(x, dtype=np.float32)
    photo_score = x[:, 11].astype(np.float64) + x[:, 5].astype(np.float64)
    has_text = x[:, 2] >= 0.5
    has_gradients = x[:, 3] >= 0.5
    # color_count_norm holds multiples of 1/16; compare on the count, robust to rounding.
    colours = np.rint(x[:, 1] * 16)
    label = np.zeros(x.shape[0], dtype=np.int64)  # vtracer_optimized
    potrace = (colours <= 4) & ~has_gradients & (x[:, 10] >= 0.4)
    label[potrace] = 1
    label[has_text & has_gradients] = 2
    label[photo_score >= 1.0] = 3
    return label


def _add_label_noise(
    rng: np.random.Generator, label: np.ndarray, n_classes: int, rate: float
) -> np.ndarray:
    flip = rng.random(label.shape[0]) < rate
    shift = rng.integers(1, n_classes, size=label.shape[0])
    return np.where(flip, (label + shift) % n_classes, label)


def sample_routing(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` routing rows: features ``x`` (float32, n x 15) and labels ``y`` (int64, n)."""
    x, _ = _sample_routing_rows(rng, n)
    y = _add_label_noise(rng, routing_rule(x), len(ROUTING_CLASSES), ROUTING_LABEL_NOISE)
    return x, y


def sample_routing_inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` routing feature rows only (the probe set of the parity check)."""
    return _sample_routing_rows(rng, n)[0]


# Raw parameter grids: (low, high, integer?) for the first 8 parameters.
_QUALITY_RAW = (
    (1, 8, True),  # color_precision
    (0, 128, True),  # layer_difference
    (0, 180, False),  # corner_threshold
    (3.5, 10, False),  # length_threshold
    (1, 20, True),  # max_iterations
    (0, 180, False),  # splice_threshold
    (0, 16, True),  # filter_speckle
    (1, 10, True),  # path_precision
)
_EFFORT_DRIVEN = (0, 4, 7)  # color_precision, max_iterations, path_precision


def _sample_quality_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    effort = rng.random(n)
    x = np.empty((n, len(QUALITY_FEATURES)), dtype=np.float64)
    for j, (low, high, integer) in enumerate(_QUALITY_RAW):
        u = rng.random(n)
        if j in _EFFORT_DRIVEN:
            u = np.clip(0.55 * effort + 0.45 * u, 0, 1)
        if integer:
            raw = np.floor(low + u * (high - low + 1)).clip(low, high)
        else:
            raw = low + u * (high - low)
        x[:, j] = (raw - low) / (high - low)
    x[:, 8] = rng.random(n) < 0.3 + 0.5 * effort
    x[:, 9] = rng.random(n) < 0.5
    return x.astype(np.float32)


def quality_function(x: np.ndarray) -> np.ndarray:
    """The noiseless target quality in (0, 1) of scaled parameter rows ``x``."""
    x = np.asarray(x, dtype=np.float64)
    cp, ld, ct, lt, mi, st, fs, pp, spline, hier = x.T
    z = (
        1.6 * cp * (1.4 - cp)
        - 1.2 * (ld - 0.3) ** 2
        + 0.8 * pp * (1 - 0.5 * ct)
        - 0.7 * lt * fs
        + 0.5 * spline * (1 - ct)
        + 0.45 * np.tanh(3 * (mi - 0.25))
        + 0.3 * hier * cp
        - 0.4 * st**2
    )
    return 1.0 / (1.0 + np.exp(-2.2 * (z - 0.75)))


def sample_quality(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` quality rows: parameters ``x`` (float32, n x 10), quality ``y`` (float32, n)."""
    x = _sample_quality_rows(rng, n)
    y = quality_function(x) + rng.normal(0, QUALITY_NOISE_SD, size=n)
    return x, np.clip(y, 0, 1).astype(np.float32)


def sample_quality_inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` parameter rows only (the probe set of the parity check)."""
    return _sample_quality_rows(rng, n)
