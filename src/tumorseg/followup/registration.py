"""Registration of a follow-up onto its baseline, and the checks that say whether to trust it.

Rigid, with SimpleITK (the field's registration library: Mattes mutual information, multi-resolution, on FLAIR
inside the brain). Why not itk-elastix: one wheel on PyPI for every platform, a rigid registration needs nothing
elastix adds, and its Euler transform maps points exactly for the quality figures. Also the resampling every
space uses (the follow-up onto the baseline, both halfway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import FollowUpError
from ..imaging.geometry import display_affine

# A registration is trusted when the two brain masks overlap at least this much after it (Dice): the same
# brain imaged twice overlaps at 0.95+ once aligned (tests: 0.97-0.99 under 10 degree / 15 mm moves); a failed
# registration leaves it far lower. Below it the numbers are still given, flagged everywhere.
QUALITY_MIN_BRAIN_DICE = 0.85


# Brain masks are nearly symmetric and alike between people, so their overlap cannot tell a mirrored follow-up or
# another patient's brain from the same brain. What can: the correlation of the two FLAIRs inside the baseline's
# brain once registered (the same brain: high; another brain: its folds and ventricles differ) and a mirror test
# (registering the follow-up flipped left-right fits clearly better: a flip is suspected). Levels calibrated on
# brats-dev / brats-train pairs (research/followup/gate.py, docs/followup.md).
QUALITY_MIN_CORRELATION = 0.75


MIRROR_MARGIN = 0.05  # mirrored fit's correlation this much above the fit as given: a left-right flip suspected


@dataclass
class Registration:
    transform: object  # SimpleITK transform: baseline (fixed) physical points -> follow-up (moving) points
    metric: float  # final Mattes mutual information (lower is better)
    brain_dice: float  # the two brain masks' overlap after registration
    rotation_deg: float
    translation_mm: list[float]
    correlation: float = 1.0  # the two FLAIRs' correlation inside the baseline's brain after registration
    mirrored_correlation: float | None = None  # the same for the follow-up flipped left-right and registered

    @property
    def mirror_suspected(self) -> bool:
        """The follow-up flipped left-right fits as one brain fits itself, and clearly better than as given."""
        m = self.mirrored_correlation
        return m is not None and m >= QUALITY_MIN_CORRELATION and m > self.correlation + MIRROR_MARGIN

    @property
    def trusted(self) -> bool:
        return (
            self.brain_dice >= QUALITY_MIN_BRAIN_DICE
            and self.correlation >= QUALITY_MIN_CORRELATION
            and not self.mirror_suspected
        )

    def why_not_trusted(self) -> list[str]:
        """Each failed check in words (empty when trusted)."""
        out = []
        if self.brain_dice < QUALITY_MIN_BRAIN_DICE:
            out.append(f"brain overlap {self.brain_dice:.3f} < {QUALITY_MIN_BRAIN_DICE}")
        if self.correlation < QUALITY_MIN_CORRELATION:
            out.append(
                f"FLAIR correlation inside the brain {self.correlation:.3f} < {QUALITY_MIN_CORRELATION} (another "
                "brain, another sequence, or a failed registration)"
            )
        if self.mirror_suspected:
            out.append(
                f"the follow-up flipped left-right fits clearly better (correlation {self.mirrored_correlation:.3f} "
                f"vs {self.correlation:.3f}): a left-right flip of one study is suspected"
            )
        return out


def _sitk_image(st, vol: np.ndarray):
    """A study's (slice, row, column) volume as a SimpleITK image in LPS physical space (display_affine: RAS)."""
    import SimpleITK as sitk

    a, _ = display_affine(st)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ a
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol))
    img.SetSpacing([float(x) for x in spacing])
    img.SetDirection([float(x) for x in (lps[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(x) for x in lps[:3, 3]])
    return img


def brain_mask(st) -> np.ndarray:
    """The head's voxels on FLAIR (skull-stripped studies: the brain), the largest 3D component."""
    from scipy import ndimage

    flair = st.volume[..., 1]
    m = flair > max(8, np.percentile(flair[flair > 0], 5) if (flair > 0).any() else 8)
    m = ndimage.binary_opening(m, iterations=1)
    lab, n = ndimage.label(m)
    if n == 0:
        raise FollowUpError(f"{st.source}: no brain found on FLAIR to register")
    keep = np.argmax(np.bincount(lab.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(lab == keep)


def _left_right_axis(img) -> int:
    """The image index axis (SimpleITK order: column, row, slice) closest to the patient's left-right axis."""
    d = np.array(img.GetDirection()).reshape(3, 3)
    return int(np.argmax(np.abs(d[0])))  # row 0 of the direction matrix: each index axis's L component (LPS)


def _flipped(img, axis: int):
    """The image's voxels mirrored along an index axis, its header kept (a left-right flip of the anatomy)."""
    import SimpleITK as sitk

    flip = [False, False, False]
    flip[axis] = True
    out = sitk.Flip(img, flip)
    out.CopyInformation(img)
    return out


def _correlation(fixed, moving, tx, fmask) -> float:
    """Pearson correlation of the fixed image and the moving one resampled through ``tx``, inside ``fmask``."""
    import SimpleITK as sitk

    f = sitk.GetArrayViewFromImage(fixed)
    m = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0))
    inside = sitk.GetArrayViewFromImage(fmask).astype(bool)
    a, b = f[inside].astype(np.float64), m[inside].astype(np.float64)
    if a.size < 10 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def register(fixed_st, moving_st, mirror_test: bool = True) -> Registration:
    """Rigid registration of the moving study onto the fixed one, on FLAIR inside the brain, with the checks
    that say whether it can be trusted (brain overlap, FLAIR correlation, and the mirror test)."""
    import SimpleITK as sitk

    fixed = sitk.Cast(_sitk_image(fixed_st, fixed_st.volume[..., 1]), sitk.sitkFloat32)
    moving = sitk.Cast(_sitk_image(moving_st, moving_st.volume[..., 1]), sitk.sitkFloat32)
    fmask = _sitk_image(fixed_st, brain_mask(fixed_st).astype(np.uint8))
    mmask = _sitk_image(moving_st, brain_mask(moving_st).astype(np.uint8))
    tx, metric = _rigid(fixed, moving, fmask, moving_st, fixed_st)
    moved_mask = sitk.GetArrayFromImage(sitk.Resample(mmask, fmask, tx, sitk.sitkNearestNeighbor, 0)).astype(bool)
    fm = sitk.GetArrayFromImage(fmask).astype(bool)
    dice = 2 * float((moved_mask & fm).sum()) / max(1, int(moved_mask.sum() + fm.sum()))
    corr = _correlation(fixed, moving, tx, fmask)
    mirrored = None
    if mirror_test:
        flipped = _flipped(moving, _left_right_axis(moving))
        try:
            ftx, _ = _rigid(fixed, flipped, fmask, moving_st, fixed_st, levels=2)
            mirrored = _correlation(fixed, flipped, ftx, fmask)
        except FollowUpError:
            mirrored = None
    euler = _as_euler(tx)
    rot = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(np.array(euler.GetMatrix()).reshape(3, 3)) - 1) / 2))))
    return Registration(tx, metric, dice, rot, [float(x) for x in euler.GetTranslation()], corr, mirrored)


def _rigid(fixed, moving, fmask, moving_st, fixed_st, levels: int = 3):
    """(transform, final metric) of SimpleITK's rigid registration of ``moving`` onto ``fixed`` (Mattes MI inside
    the fixed brain; ``levels`` of the 4-2-1 pyramid, coarsest first: 2 stops at half resolution)."""
    import SimpleITK as sitk

    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # every voxel of a small study (a sample of few voxels lets it drift), 15 % of a large one; a fixed seed:
    # 0 would mean the wall clock, and the same two studies would get a different answer each run
    reg.SetMetricSamplingPercentage(0.15 if fixed.GetNumberOfPixels() > 2_000_000 else 1.0, seed=39)
    reg.SetMetricFixedMask(fmask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=200, relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    # three levels where the smallest side keeps >= 16 voxels at the coarsest (4x); fewer for small volumes
    small = min(min(fixed.GetSize()), min(moving.GetSize()))
    shrink = [4, 2, 1] if small >= 64 else [2, 1] if small >= 32 else [1]
    sigmas = [2.0, 1.0, 0.0][-len(shrink) :]
    if levels < len(shrink) and len(shrink) > 1:
        shrink, sigmas = shrink[: max(1, levels)], sigmas[: max(1, levels)]
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(sigmas)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    try:
        tx = reg.Execute(fixed, moving)
    except RuntimeError as exc:
        why = str(exc).strip().splitlines()[-1][:200]
        raise FollowUpError(f"{moving_st.source} could not be registered onto {fixed_st.source} ({why})") from None
    return tx, float(reg.GetMetricValue())


def _as_euler(tx):
    import SimpleITK as sitk

    t = tx
    while isinstance(t, sitk.CompositeTransform) or t.GetName() == "CompositeTransform":
        t = sitk.CompositeTransform(t).GetNthTransform(0)
    return sitk.Euler3DTransform(t)


def resample(grid_st, src_st, vol: np.ndarray, tx, nearest: bool) -> np.ndarray:
    """``vol`` (on ``src_st``'s grid) on ``grid_st``'s grid, ``tx`` mapping grid points to ``src_st`` points: nearest
    neighbour for masks and labels, linear for images. The one resampling every follow-up view and space uses."""
    import SimpleITK as sitk

    out = sitk.Resample(
        _sitk_image(src_st, vol),
        _sitk_image(grid_st, np.zeros(grid_st.volume.shape[:3], np.uint8)),
        tx,
        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        0,
    )
    return sitk.GetArrayFromImage(out)


def on_baseline(reg: Registration, fixed_st, moving_st, vol: np.ndarray, nearest: bool) -> np.ndarray:
    """A follow-up volume (its own grid) on the baseline's grid through the registration: a mask (nearest
    neighbour) for the change map, or an image (linear) for showing the two side by side."""
    return resample(fixed_st, moving_st, vol, reg.transform, nearest)


def half_transform(reg: Registration):
    """H with H(H(x)) = T(x) for the rigid T (baseline points -> follow-up points): the halfway space's map to the
    follow-up (and H^-1 to the baseline)."""
    import SimpleITK as sitk
    from scipy.spatial.transform import Rotation

    e = _as_euler(reg.transform)
    r = np.array(e.GetMatrix()).reshape(3, 3)
    c, t = np.array(e.GetCenter()), np.array(e.GetTranslation())
    offset = c + t - r @ c  # T(x) = R x + offset
    r_half = Rotation.from_rotvec(Rotation.from_matrix(r).as_rotvec() / 2).as_matrix()
    h = sitk.AffineTransform(3)
    h.SetMatrix([float(x) for x in r_half.ravel()])
    h.SetTranslation([float(x) for x in np.linalg.solve(r_half + np.eye(3), offset)])
    return h


def resample_study(grid_st, src_st, tx):
    """``src_st``'s three channels (linear) on ``grid_st``'s grid, ``tx`` mapping grid points to ``src_st`` points:
    a Study with the grid's geometry (so it is fed to the model as the grid study is)."""
    from dataclasses import replace

    chans = [resample(grid_st, src_st, src_st.volume[..., ch], tx, False) for ch in range(src_st.volume.shape[-1])]
    vol = np.clip(np.rint(np.stack(chans, -1)), 0, 255).astype(np.uint8)
    return replace(grid_st, volume=vol, source=src_st.source, notes=[], single_sequence=src_st.single_sequence)
