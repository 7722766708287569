"""PyRadiomics features of the lung, lesion and heart regions, extracted as the cohort.

The outcome models were trained on the Covid-MedIA feature tables of Chassagnon et
al. (Medical Image Analysis 67, 2021). Their values show the extraction settings:
whole-image z-score normalisation, resampling to 1 mm voxels, ``binWidth`` 25 and
the 107 "original" 3D features. :class:`RadiomicsSettings` contains those settings and
:func:`extract_radiomics` gives the same values as a plain
``RadiomicsFeatureExtractor.execute`` call per region, computed faster:

- the image is normalised and B-spline resampled once for all regions, on the
  same voxel lattice that PyRadiomics uses for each region;
- each region is cropped to its bounding box before the feature classes run;
- the mesh surface, volume and maximum diameters of the shape class are computed
  from per-cube tables and convex hulls instead of PyRadiomics' all-pairs vertex
  loop, which takes minutes on a lung;
- regions run in parallel processes when ``workers > 1``.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from radiomics import cShape, getFeatureClasses
from radiomics.featureextractor import RadiomicsFeatureExtractor
from radiomics.shape import RadiomicsShape
from scipy.spatial import ConvexHull, QhullError

from covidct.intake.volume import CTVolume
from covidct.segment.result import LEFT_LUNG, RIGHT_LUNG, Segmentation

__all__ = [
    "FEATURE_CLASSES",
    "FEATURE_NAMES",
    "REGIONS",
    "RadiomicsSettings",
    "extract_radiomics",
    "region_masks",
]

logger = logging.getLogger(__name__)

#: Regions in the order of the cohort's tables. Left and right are patient sides.
REGIONS = ("disease_left", "disease_right", "lung_left", "lung_right", "heart")

#: PyRadiomics feature classes of the cohort's tables.
FEATURE_CLASSES = ("firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm", "shape")

# Features that are 0 for an empty region. Every other feature is then missing.
_VOLUME_FEATURES = ("original_shape_VoxelVolume", "original_shape_MeshVolume")


def _feature_names() -> list[str]:
    classes = getFeatureClasses()
    names = []
    for class_name in FEATURE_CLASSES:
        for name, deprecated in classes[class_name].getFeatureNames().items():
            if not deprecated:
                names.append(f"original_{class_name}_{name}")
    return sorted(names)


#: The 107 non-deprecated "original" feature names, without the region suffix, in
#: the column order of the cohort's tables (sorted).
FEATURE_NAMES: list[str] = _feature_names()


@dataclass(frozen=True)
class RadiomicsSettings:
    """PyRadiomics settings; the defaults reproduce the cohort's extraction.

    Attributes:
        resampled_spacing_mm: Voxel size ``(x, y, z)`` in mm that image and masks
            are resampled to before extraction, or None to keep the CT grid. The
            cohort used 1 mm: its ``TotalEnergy`` equals ``Energy`` in every row.
        interpolator: SimpleITK interpolator name for the image; masks always use
            nearest neighbour. ``sitkBSpline`` is the PyRadiomics default.
        normalize: Replace HU by z-scores of the whole image's mean and standard
            deviation before resampling. The cohort's first-order values are such
            z-scores.
        normalize_scale: Factor applied after normalisation (PyRadiomics
            ``normalizeScale``); the cohort used 1.
        remove_outliers: Clip normalised values to this many standard deviations
            (PyRadiomics ``removeOutliers``), or None; the cohort clipped nothing.
        bin_width: Width of the grey-level bins of texture and entropy features,
            in the unit of the (normalised) image. With 25 on z-scores every
            region has one or two bins, split at the image mean.
        distances: Neighbour distances in voxels of the GLCM, GLDM and NGTDM.
    """

    resampled_spacing_mm: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    interpolator: str = "sitkBSpline"
    normalize: bool = True
    normalize_scale: float = 1.0
    remove_outliers: float | None = None
    bin_width: float = 25.0
    distances: tuple[int, ...] = (1,)

    def pyradiomics_settings(self) -> dict[str, Any]:
        """Return the settings as keyword arguments of ``RadiomicsFeatureExtractor``.

        Returns:
            A dict that, passed to ``RadiomicsFeatureExtractor(**settings)``, gives
            the plain extraction that :func:`extract_radiomics` reproduces.
        """
        spacing = self.resampled_spacing_mm
        return {
            "normalize": self.normalize,
            "normalizeScale": self.normalize_scale,
            "removeOutliers": self.remove_outliers,
            "resampledPixelSpacing": None if spacing is None else list(spacing),
            "interpolator": self.interpolator,
            "binWidth": self.bin_width,
            "distances": list(self.distances),
            "force2D": False,
            "additionalInfo": False,
        }


def region_masks(segmentation: Segmentation) -> dict[str, np.ndarray]:
    """Build the boolean mask of each of :data:`REGIONS` on the CT grid.

    Args:
        segmentation: Lung, lesion and heart masks of one study.

    Returns:
        One boolean ``[z, y, x]`` array per region name: ``disease_*`` are the
        lesions of either class inside that lung, ``lung_*`` the whole lung with
        its lesions, ``heart`` the heart mask.
    """
    left = segmentation.lungs == LEFT_LUNG
    right = segmentation.lungs == RIGHT_LUNG
    lesion = segmentation.lesions > 0
    return {
        "disease_left": lesion & left,
        "disease_right": lesion & right,
        "lung_left": left,
        "lung_right": right,
        "heart": np.asarray(segmentation.heart, dtype=bool),
    }


def extract_radiomics(
    volume: CTVolume,
    segmentation: Segmentation,
    settings: RadiomicsSettings | None = None,
    workers: int = 1,
) -> dict[str, float | None]:
    """Extract the 107 original PyRadiomics features of each of :data:`REGIONS`.

    Args:
        volume: The CT in HU.
        segmentation: Masks on the CT grid.
        settings: Extraction settings; default: the cohort's.
        workers: Number of processes computing regions in parallel; 1 computes
            them in this process.

    Returns:
        535 values keyed ``{feature}_{region}``, as the columns of the cohort's
        tables (for example ``original_firstorder_Mean_lung_left``). Shape
        features are in mm, mm² and mm³ of the resampled grid. A region that is
        empty, or too small for PyRadiomics (fewer than two dimensions of its
        resampled bounding box longer than one voxel), gets 0 for
        ``VoxelVolume`` and ``MeshVolume`` and None for every other feature. A
        feature that PyRadiomics returns as NaN is None.

    Raises:
        ValueError: If a mask's shape differs from the CT's, or ``workers < 1``.
    """
    settings = settings or RadiomicsSettings()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    for name in ("lungs", "heart", "lesions"):
        shape = np.shape(getattr(segmentation, name))
        if shape != volume.hu.shape:
            raise ValueError(
                f"segmentation.{name} has shape {shape} but the CT has "
                f"{volume.hu.shape}: resample the masks onto the CT grid first"
            )

    extractor = RadiomicsFeatureExtractor(**settings.pyradiomics_settings())
    kwargs = dict(extractor.settings)
    image = _normalized_image(volume, kwargs)

    masks = region_masks(segmentation)
    outcomes: dict[str, _RegionOutcome] = {}
    for region in REGIONS:
        if not masks[region].any():
            outcomes[region] = _RegionOutcome(_missing_features(), "the mask is empty")
            del masks[region]
    tasks = _group_tasks(image, masks, kwargs)

    # Largest groups first, so that parallel workers finish close together.
    tasks.sort(key=lambda task: -task.image.size)
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            outcomes.update(_compute_group(task, kwargs))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            min(workers, len(tasks)), context, initializer=_ignore_interrupts
        ) as pool:
            futures = [pool.submit(_compute_group, task, kwargs) for task in tasks]
            for future in futures:
                outcomes.update(future.result())

    features: dict[str, float | None] = {}
    for region in REGIONS:
        outcome = outcomes[region]
        if outcome.missing_reason is not None:
            logger.info(
                "radiomics region %s: %s; volumes are 0, other features missing",
                region,
                outcome.missing_reason,
            )
        for name in FEATURE_NAMES:
            features[f"{name}_{region}"] = outcome.values[name]
    return features


def _missing_features() -> dict[str, float | None]:
    values: dict[str, float | None] = dict.fromkeys(FEATURE_NAMES)
    for name in _VOLUME_FEATURES:
        values[name] = 0.0
    return values


# ---------------------------------------------------------------------------
# Image preparation: normalise once, then crop each region with a margin.
# ---------------------------------------------------------------------------

# CT voxels kept around a region for B-spline resampling. The B-spline prefilter
# spreads a value with a factor of 0.268 per voxel (0.268**32 is about 5e-19), so
# the cropped image gives the coefficients of the whole one to double precision
# while the filter's work shrinks to the region.
_SPLINE_MARGIN = 32


def _normalized_image(volume: CTVolume, kwargs: dict[str, Any]) -> sitk.Image:
    """Normalise the whole image as ``imageoperations.normalizeImage`` does."""
    image = volume.to_sitk()
    if not kwargs["normalize"]:
        return image
    image = sitk.Normalize(image)
    outliers = kwargs.get("removeOutliers")
    if outliers is not None:
        array = sitk.GetArrayFromImage(image)
        np.clip(array, -outliers, outliers, out=array)
        clipped = sitk.GetImageFromArray(array)
        clipped.CopyInformation(image)
        image = clipped
    return image * kwargs["normalizeScale"]


@dataclass
class _Grid:
    """Geometry of an image: size, spacing and origin ``(x, y, z)``, direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def image(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass
class _GroupTask:
    """Regions that share one resampled image, with their part of the CT."""

    image: np.ndarray  # [z, y, x] crop of the normalised CT
    masks: dict[str, np.ndarray]  # region name: [z, y, x] uint8 crop of its mask
    crop_grid: _Grid  # where the crops lie
    target_grid: _Grid | None  # resampling grid, None to keep the CT grid


@dataclass
class _RegionOutcome:
    values: dict[str, float | None]
    missing_reason: str | None = None


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Return lower corner and size ``(x, y, z)`` of a non-empty mask, else None."""
    lower, upper = [], []
    for axis in (2, 1, 0):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            return None
        lower.append(present[0])
        upper.append(present[-1])
    low = np.array(lower, dtype=int)
    return low, np.array(upper, dtype=int) - low + 1


# Regions resampled together: a lesion region lies inside its lung's grid.
_GROUPS = (("lung_left", "disease_left"), ("lung_right", "disease_right"), ("heart",))


def _group_tasks(
    image: sitk.Image, masks: dict[str, np.ndarray], kwargs: dict[str, Any]
) -> list[_GroupTask]:
    """Split the non-empty regions into groups that share a resampling grid."""
    old_spacing = np.array(image.GetSpacing(), dtype=float)
    requested = None
    if kwargs["resampledPixelSpacing"] is not None:
        requested = np.array(kwargs["resampledPixelSpacing"], dtype=float)
        requested = np.where(requested == 0, old_spacing, requested)

    # PyRadiomics keeps the original spacing along axes where a region is one
    # voxel thick, and skips interpolation when no spacing changes. Regions
    # with such a spacing of their own form a group alone.
    groups: dict[tuple[str, tuple[float, ...] | None], list[str]] = {}
    boxes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for members in _GROUPS:
        for region in members:
            if region not in masks:
                continue
            box = _bounding_box(masks[region])
            if box is None:  # the caller drops empty masks before this
                continue
            boxes[region] = box
            spacing: np.ndarray | None = None
            if requested is not None:
                spacing = np.where(boxes[region][1] != 1, requested, old_spacing)
                if np.allclose(old_spacing, spacing):
                    spacing = None
            key_spacing = None if spacing is None else tuple(spacing.tolist())
            own = spacing is not None and not np.array_equal(
                spacing, np.asarray(requested)
            )
            group_name = region if own else members[0]
            groups.setdefault((group_name, key_spacing), []).append(region)

    image_array = sitk.GetArrayViewFromImage(image)
    tasks = []
    for (_, group_spacing), group in groups.items():
        lower = np.min([boxes[region][0] for region in group], axis=0)
        upper = np.max([boxes[region][0] + boxes[region][1] for region in group], 0)
        bbox = (lower, upper - lower)
        target = None
        margin = 0
        if group_spacing is not None:
            target = _target_grid(
                image, bbox, np.array(group_spacing), kwargs["padDistance"]
            )
            margin = _SPLINE_MARGIN
        crop_lower = np.maximum(lower - margin, 0)
        crop_upper = np.minimum(upper + margin, np.array(image.GetSize()))
        window = tuple(slice(crop_lower[a], crop_upper[a]) for a in (2, 1, 0))
        crop_grid = _Grid(
            size=tuple(int(n) for n in crop_upper - crop_lower),  # type: ignore[arg-type]
            spacing=image.GetSpacing(),
            origin=image.TransformIndexToPhysicalPoint([int(i) for i in crop_lower]),
            direction=image.GetDirection(),
        )
        tasks.append(
            _GroupTask(
                image=np.array(image_array[window]),
                masks={r: masks[r][window].astype(np.uint8) for r in group},
                crop_grid=crop_grid,
                target_grid=target,
            )
        )
    return tasks


def _target_grid(
    image: sitk.Image,
    bbox: tuple[np.ndarray, np.ndarray],
    spacing: np.ndarray,
    pad_distance: int,
) -> _Grid:
    """Compute a region's resampled grid as ``imageoperations.resampleImage`` does.

    The grid covers the bounding box, half an original voxel and ``pad_distance``
    new voxels on each side, clipped to the image. Its first voxel centre lies on
    the lattice that starts half a new voxel inside the image corner.
    """
    lower, size = bbox
    old_spacing = np.array(image.GetSpacing(), dtype=float)
    ratio = old_spacing / spacing
    new_lower = np.floor((lower - 0.5) * ratio - pad_distance)
    new_upper = np.ceil((lower + size - 0.5) * ratio + pad_distance)
    max_upper = np.ceil(np.array(image.GetSize()) * ratio) - 1
    new_lower = np.where(new_lower < 0, 0, new_lower)
    new_upper = np.where(new_upper > max_upper, max_upper, new_upper)
    origin_index = 0.5 * (spacing - old_spacing) / old_spacing + new_lower / ratio
    return _Grid(
        size=tuple(int(n) for n in new_upper - new_lower + 1),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        origin=image.TransformContinuousIndexToPhysicalPoint(origin_index),
        direction=image.GetDirection(),
    )


# ---------------------------------------------------------------------------
# Feature computation of one region (runs in a worker process when parallel).
# ---------------------------------------------------------------------------


class _DropSymmetryNotice(logging.Filter):
    """Drop PyRadiomics' notice that the GLCM is symmetrical.

    PyRadiomics 3 logs it at WARNING on every GLCM computation, although it is
    expected with the default symmetrical GLCM; it would otherwise print five
    times per study.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "GLCM is symmetrical" not in record.getMessage()


def _quiet_symmetry_notice() -> None:
    radiomics_logger = logging.getLogger("radiomics.glcm")
    if not any(isinstance(f, _DropSymmetryNotice) for f in radiomics_logger.filters):
        radiomics_logger.addFilter(_DropSymmetryNotice())


def _ignore_interrupts() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and shuts
    # the pool down, so workers must not print their own tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _compute_group(task: _GroupTask, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Resample the image of a group once and compute the features of each region."""
    _quiet_symmetry_notice()
    image = task.crop_grid.image(task.image)
    if task.target_grid is not None:
        image = _resample(image, task.target_grid, kwargs["interpolator"])
    outcomes = {}
    for region, mask_array in task.masks.items():
        mask = task.crop_grid.image(mask_array)
        if task.target_grid is not None:
            mask = _resample(mask, task.target_grid, "sitkNearestNeighbor")
        outcomes[region] = _compute_region(image, mask, kwargs)
    return outcomes


def _compute_region(
    image: sitk.Image, mask: sitk.Image, kwargs: dict[str, Any]
) -> _RegionOutcome:
    """Crop image and mask to the mask and compute all features of the region."""
    mask_array = sitk.GetArrayViewFromImage(mask)
    bbox = _bounding_box(mask_array)
    if bbox is None:
        return _RegionOutcome(_missing_features(), "no voxel left after resampling")
    lower, size = bbox
    dimensions = int(np.sum(size > 1))
    n_voxels = int(np.count_nonzero(mask_array))
    if dimensions < kwargs["minimumROIDimensions"]:
        reason = (
            f"{n_voxels} voxel(s) spanning {dimensions} dimension(s), fewer than "
            f"the {kwargs['minimumROIDimensions']} that PyRadiomics requires"
        )
        return _RegionOutcome(_missing_features(), reason)
    minimum_size = kwargs["minimumROISize"]
    if minimum_size is not None and n_voxels <= minimum_size:
        reason = f"{n_voxels} voxel(s), not above minimumROISize {minimum_size}"
        return _RegionOutcome(_missing_features(), reason)

    cropper = sitk.RegionOfInterestImageFilter()
    cropper.SetIndex([int(i) for i in lower])
    cropper.SetSize([int(n) for n in size])
    region_image = cropper.Execute(image)
    region_mask = cropper.Execute(mask)

    classes = getFeatureClasses()
    binning: dict[str, Any] = {}
    values: dict[str, float | None] = {}
    for class_name in FEATURE_CLASSES:
        if class_name == "shape":
            feature_class: type = _FastShape
        else:
            feature_class = _shared_binning(classes[class_name], binning)
        calculator = feature_class(region_image, region_mask, **kwargs)
        for name, value in calculator.execute().items():
            number = float(value)
            values[f"original_{class_name}_{name}"] = (
                number if math.isfinite(number) else None
            )
    return _RegionOutcome(values)


def _resample(image: sitk.Image, grid: _Grid, interpolator: str) -> sitk.Image:
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(grid.spacing)
    resampler.SetOutputOrigin(grid.origin)
    resampler.SetOutputDirection(grid.direction)
    resampler.SetSize(grid.size)
    resampler.SetOutputPixelType(image.GetPixelID())
    resampler.SetInterpolator(getattr(sitk, interpolator))
    return resampler.Execute(image)


def _shared_binning(feature_class: type, cache: dict[str, Any]) -> type:
    """Subclass a feature class so that all classes of a region bin only once.

    Every texture class and the first-order class discretise the same image and
    mask with the same bin width, which costs about a second per class on a lung.
    """

    class SharedBinning(feature_class):  # type: ignore[misc, valid-type]
        def _applyBinning(self, matrix: np.ndarray) -> np.ndarray:  # noqa: N802
            if "matrix" not in cache:
                cache["matrix"] = super()._applyBinning(matrix).copy()
                cache["grayLevels"] = self.coefficients["grayLevels"]
                cache["Ng"] = self.coefficients["Ng"]
            self.coefficients["grayLevels"] = cache["grayLevels"].copy()
            self.coefficients["Ng"] = cache["Ng"]
            return cache["matrix"].copy()

    # PyRadiomics classes log to the logger named after their module.
    SharedBinning.__name__ = feature_class.__name__
    SharedBinning.__module__ = feature_class.__module__
    return SharedBinning


class _FastShape(RadiomicsShape):
    """The PyRadiomics shape class with a faster mesh computation.

    ``cShape.calculate_coefficients`` compares every pair of mesh vertices to find
    the maximum diameters, which takes about two minutes for a lung at 1 mm. This
    class computes the same surface area, mesh volume and diameters with
    :func:`_mesh_coefficients`; the remaining steps follow
    ``RadiomicsShape._initSegmentBasedCalculation`` of PyRadiomics 3.0.1.
    """

    def _initSegmentBasedCalculation(self) -> None:  # noqa: N802 (PyRadiomics name)
        self.pixelSpacing = np.array(self.inputImage.GetSpacing()[::-1])
        mask = sitk.GetArrayFromImage(self.inputMask) == self.label
        self.maskArray = np.pad(mask, 1)
        self.labelledVoxelCoordinates = np.where(self.maskArray != 0)
        self.SurfaceArea, self.Volume, self.diameters = _mesh_coefficients(
            self.maskArray, self.pixelSpacing
        )

        n_voxels = len(self.labelledVoxelCoordinates[0])
        coordinates = np.array(self.labelledVoxelCoordinates, dtype="int").T
        physical = coordinates * self.pixelSpacing[None, :]
        physical -= np.mean(physical, axis=0)
        physical /= np.sqrt(n_voxels)
        covariance = np.dot(physical.T.copy(), physical)
        self.eigenValues = np.linalg.eigvals(covariance)
        rounding_errors = (self.eigenValues < 0) & (self.eigenValues > -1e-10)
        self.eigenValues[rounding_errors] = 0
        self.eigenValues.sort()


# ---------------------------------------------------------------------------
# Marching-cubes surface area, mesh volume and maximum diameters.
# ---------------------------------------------------------------------------

# Corners of a marching cube as (z, y, x) offsets, in the bit order of
# PyRadiomics' cube index.
_CUBE_CORNERS = ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0),
                 (1, 0, 0), (1, 0, 1), (1, 1, 1), (1, 1, 0))  # fmt: skip


def _cube_indices(mask: np.ndarray) -> np.ndarray:
    """Return the 8-bit corner pattern of every 2x2x2 cube of a boolean mask."""
    nz, ny, nx = mask.shape
    index = np.zeros((nz - 1, ny - 1, nx - 1), dtype=np.uint8)
    for bit, (dz, dy, dx) in enumerate(_CUBE_CORNERS):
        corner = mask[dz : dz + nz - 1, dy : dy + ny - 1, dx : dx + nx - 1]
        index |= corner.astype(np.uint8) << bit
    return index


def _single_cube(pattern: int) -> np.ndarray:
    cube = np.zeros((2, 2, 2), dtype=bool)
    for bit, corner in enumerate(_CUBE_CORNERS):
        cube[corner] = bool(pattern >> bit & 1)
    return cube


@functools.lru_cache(maxsize=16)
def _cube_tables(spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Measure what each cube pattern adds to PyRadiomics' area and volume.

    For a cube whose lower corner sits at ``o`` (mm), the triangles of pattern
    ``p`` add ``area[p]`` to the surface area and ``volume[p] + o . moment[p] / 6``
    to the mesh volume, because the signed tetrahedron volume
    ``det(a + o, b + o, c + o)`` equals ``det(a, b, c) + o . (a x b + b x c + c x a)``.
    The three tables are read from ``cShape.calculate_coefficients`` on one cube
    at the origin and on two cubes side by side along each axis, so they carry
    PyRadiomics' own triangulation.

    Args:
        spacing: Voxel size ``(z, y, x)`` in mm.

    Returns:
        ``area`` (256,), ``volume`` (256,) and ``moment`` (256, 3) as (z, y, x).
    """
    spacing_array = np.array(spacing, dtype=float)
    area = np.zeros(256)
    volume = np.zeros(256)
    moment = np.zeros((256, 3))
    cubes = [_single_cube(pattern) for pattern in range(256)]
    for pattern, cube in enumerate(cubes):
        area[pattern], volume[pattern], _ = cShape.calculate_coefficients(
            cube, spacing_array
        )
    for axis in range(3):
        for pattern, cube in enumerate(cubes):
            # An empty layer, then the cube: the first cube's pattern is the lower
            # face of this one, and the second cube sits one voxel along ``axis``.
            pair = np.concatenate([np.zeros_like(cube.take([0], axis)), cube], axis)
            lower_pattern = int(_cube_indices(pair.take([0, 1], axis)).ravel()[0])
            _, total, _ = cShape.calculate_coefficients(pair, spacing_array)
            shift = total - volume[lower_pattern] - volume[pattern]
            moment[pattern, axis] = 6.0 * shift / spacing_array[axis]
    return area, volume, moment


def _mesh_coefficients(
    mask: np.ndarray, spacing: np.ndarray
) -> tuple[float, float, np.ndarray]:
    """Compute what ``cShape.calculate_coefficients`` returns, without its O(n²) loop.

    Args:
        mask: Boolean ``[z, y, x]`` mask padded with one empty voxel on every side.
        spacing: Voxel size ``(z, y, x)`` in mm.

    Returns:
        Surface area (mm²), mesh volume (mm³) and the maximum vertex distances
        (mm) within one slice (equal z), one row (equal y), one column (equal x)
        and overall, in that order.
    """
    area_table, volume_table, moment_table = _cube_tables(
        tuple(float(s) for s in spacing)
    )
    index = _cube_indices(mask)
    surface = np.nonzero((index != 0) & (index != 255))
    patterns = index[surface]
    surface_area = float(area_table[patterns].sum())
    mesh_volume = float(volume_table[patterns].sum())
    for axis in range(3):
        corner_mm = surface[axis] * spacing[axis]
        mesh_volume += float(np.dot(corner_mm, moment_table[patterns, axis])) / 6.0
    diameters = _mesh_diameters(_mesh_vertices(mask, spacing))
    return surface_area, mesh_volume, diameters


def _mesh_vertices(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Return the marching-cubes vertices (mm, ``(n, 3)`` as z, y, x).

    A vertex sits halfway along every edge between a voxel inside and one
    outside the mask; PyRadiomics stores each such edge once.
    """
    vertices = []
    for axis in range(3):
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis] = slice(0, -1)
        upper[axis] = slice(1, None)
        crossing = np.nonzero(mask[tuple(lower)] != mask[tuple(upper)])
        offsets = [0.0, 0.0, 0.0]
        offsets[axis] = 0.5
        columns = [(crossing[d] + offsets[d]) * spacing[d] for d in range(3)]
        vertices.append(np.stack(columns, axis=1))
    return np.concatenate(vertices)


def _mesh_diameters(vertices: np.ndarray) -> np.ndarray:
    """Return the maximum distances in planes of equal z, y and x, and overall.

    The farthest pair of a point set lies on its convex hull, so only hull
    vertices are compared: in 3D for the overall diameter, in 2D within each
    plane of equal coordinate for the others. Planes whose bounding-box diagonal
    cannot beat the best distance so far are skipped.
    """
    diameters = np.zeros(4)
    for axis in range(3):
        order = np.argsort(vertices[:, axis], kind="stable")
        sorted_vertices = vertices[order]
        values = sorted_vertices[:, axis]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        ends = np.r_[starts[1:], len(values)]
        in_plane = [d for d in range(3) if d != axis]
        extent = np.maximum.reduceat(sorted_vertices, starts) - np.minimum.reduceat(
            sorted_vertices, starts
        )
        diagonal = np.sum(extent[:, in_plane] ** 2, axis=1)
        best = 0.0
        for plane_index in np.argsort(-diagonal, kind="stable"):
            if diagonal[plane_index] < best:
                break
            plane = sorted_vertices[starts[plane_index] : ends[plane_index]]
            hull = _hull_points(plane, in_plane)
            best = max(best, _max_squared_distance(hull))
        diameters[axis] = math.sqrt(best)
    diameters[3] = math.sqrt(_max_squared_distance(_hull_points(vertices, [0, 1, 2])))
    return diameters


def _hull_points(points: np.ndarray, axes: list[int]) -> np.ndarray:
    """Return the points on the convex hull of ``points[:, axes]``, or all points."""
    if len(points) <= len(axes) + 1:
        return points
    try:
        hull = ConvexHull(points[:, axes])
    except QhullError:
        # Flat or collinear sets have no full-dimensional hull: compare them all.
        return points
    return points[hull.vertices]


def _max_squared_distance(points: np.ndarray, chunk: int = 2048) -> float:
    """Return the largest squared distance between two of ``points``."""
    best = 0.0
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        difference = block[:, None, :] - points[None, :, :]
        squared = difference * difference
        distances = (squared[..., 0] + squared[..., 1]) + squared[..., 2]
        best = max(best, float(distances.max()))
    return best
