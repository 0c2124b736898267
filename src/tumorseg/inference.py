"""The one Predictor that every front end (CLI, app, REST API, Python) calls."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from .engines.loading import load_engine
from .errors import ImageReadError
from .imaging.geometry import model_turn, turned, unturned
from .imaging.images import exif_orientation, read_image, to_uint8_rgb
from .imaging.render import contour_overlay, heatmap_overlay
from .model.info import ModelInfo
from .model.input_checks import judge
from .model.postprocess import PostProcess
from .model.preprocess import context_step, with_context

DISCLAIMER = "Research use only. Not a medical device: not for diagnosis or treatment decisions."


def resize_prob(prob: np.ndarray, h: int, w: int) -> np.ndarray:
    if prob.shape == (h, w):
        return prob.astype(np.float32)
    return np.asarray(Image.fromarray(prob.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))


@dataclass
class Prediction:
    """A segmentation of one 2D image, at the image's own resolution."""

    image: np.ndarray  # uint8 RGB shown to the user
    prob: np.ndarray  # float32 HxW in [0, 1]
    mask: np.ndarray  # bool HxW
    threshold: float
    pixel_spacing: tuple[float, float] | None = None  # (row, column) mm
    uncertainty: np.ndarray | None = None  # float32 HxW, with TTA
    source: str = ""
    meta: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # unusual input (see checks.judge)

    @property
    def area_pixels(self) -> int:
        return int(self.mask.sum())

    @property
    def area_mm2(self) -> float | None:
        if not self.pixel_spacing:
            return None
        return float(self.area_pixels * self.pixel_spacing[0] * self.pixel_spacing[1])

    @property
    def max_prob(self) -> float:
        return float(self.prob.max()) if self.prob.size else 0.0

    def heatmap(self, alpha: float = 0.5, floor: float = 0.05) -> np.ndarray:
        return heatmap_overlay(self.image, self.prob, alpha, floor)

    @cached_property
    def heatmap_overlay(self) -> np.ndarray:
        return self.heatmap()

    @cached_property
    def contour_overlay(self) -> np.ndarray:
        return contour_overlay(self.image, self.mask)

    def prob_png_array(self) -> np.ndarray:
        return (self.prob * 255 + 0.5).astype(np.uint8)

    def mask_png_array(self) -> np.ndarray:
        return self.mask.astype(np.uint8) * 255

    def summary(self) -> dict:
        return {
            "source": self.source,
            "height": int(self.mask.shape[0]),
            "width": int(self.mask.shape[1]),
            "tumour_pixels": self.area_pixels,
            "area_mm2": self.area_mm2,
            "max_probability": self.max_prob,
            "threshold": self.threshold,
            "warnings": list(self.warnings),
        }


class Predictor:
    """Loads a model once and segments images or whole studies with it.

    ``model=None`` uses the bundled default model. Thread-safe: engine calls are serialised.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str = "auto",
        engine: str | None = None,
        threads: int = 0,
        threshold: float | None = None,
    ):
        self._attach(load_engine(model, engine, threads, device), threshold)

    @classmethod
    def from_engine(cls, engine, threshold: float | None = None) -> Predictor:
        """A Predictor around an already loaded engine (benchmarks compare engines this way)."""
        self = cls.__new__(cls)
        self._attach(engine, threshold)
        return self

    def _attach(self, engine, threshold: float | None) -> None:
        self.engine, self.meta, self.size = engine, engine.meta, engine.size
        self.model_info = ModelInfo.from_meta(engine.meta)
        self.post = PostProcess.of(self.model_info, threshold)  # the one post-processing rule

    @property
    def threshold(self) -> float:
        return self.post.threshold

    @property
    def model_path(self) -> Path:
        return self.engine.model_path

    def engine_line(self) -> str:
        """Which model and engine, and why, in the one line the CLI, the server and the page all show."""
        return f"model {self.model_path.name}, engine {self.engine.name}: {self.engine.reason}"

    def info(self) -> dict:
        m = self.meta
        choice = self.engine.choice
        return {
            "model": self.model_path.name,
            "engine": self.engine.name,
            "engine_reason": self.engine.reason,
            "engine_line": self.engine_line(),
            "engine_choice": choice.as_dict() if choice is not None else None,
            "input_size": self.size,
            "threshold": self.threshold,
            "architecture": m.get("architecture", {}).get("name"),
            "channels": m.get("channels"),
            "metrics": m.get("metrics", {}),
            "trained_epochs": m.get("training", {}).get("epoch"),
            "disclaimer": DISCLAIMER,
        }

    # ---- core: uint8 RGB slices at any size -> probabilities at their own size
    def _model_input(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] == (self.size, self.size):
            return img
        return np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.BILINEAR))

    def probabilities(
        self,
        images: list[np.ndarray],
        tta: bool = False,
        batch_size: int = 16,
        stack: bool = False,
        slice_spacing_mm: float | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Probability maps for display-ready uint8 RGB images, each at its own resolution.

        ``stack``: the images are one study's slices in order, so a 2.5D model reads each slice's
        neighbours (``preprocess``; about ``context_mm`` apart given ``slice_spacing_mm``); otherwise
        each image stands alone. ``on_batch(done, total)`` reports progress after each batch.
        """
        spec = self.model_info.input
        resized = np.stack([self._model_input(im) for im in images]) if images else np.zeros((0, 1, 1, 3), np.uint8)
        groups = None if stack else [(i, i + 1) for i in range(len(images))]
        step = context_step(slice_spacing_mm, spec.context_mm) if stack else 1
        probs: list[np.ndarray] = []
        uncs: list[np.ndarray] | None = [] if tta else None
        for s in range(0, len(images), batch_size):
            sel = np.arange(s, min(s + batch_size, len(images)))
            x = with_context(resized, spec.context, step, sel, groups)
            # the model's own test-time views (chosen on validation); --tta asks for their spread too,
            # over the left-right flip at least
            views = self.model_info.tta if not tta or self.model_info.tta != "none" else "hflip"
            p, u = self.engine.run_views(x, views)
            for i, k in enumerate(sel):
                probs.append(resize_prob(p[i], *images[k].shape[:2]))
                if tta:
                    uncs.append(resize_prob(u[i], *images[k].shape[:2]))
            if on_batch is not None:
                on_batch(len(probs), len(images))
        return probs, uncs

    def mask_from_prob(self, prob: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """The model's post-processing (threshold, then small 2D components removed): ``postprocess.PostProcess``,
        the rule evaluation, the robustness suite and packaging use too."""
        return self.post.with_threshold(threshold).apply(prob)

    def predict(
        self,
        image: str | os.PathLike | np.ndarray | bytes,
        tta: bool = False,
        threshold: float | None = None,
        pixel_spacing: tuple[float, float] | None = None,
        name: str | None = None,
    ) -> Prediction:
        """Segment one 2D image.

        Args:
            image: a path, raw file bytes or an array (any size and dtype; gray, RGB or RGBA).
            tta: flip test-time augmentation (adds an uncertainty map).
            threshold: probability threshold (default: the model's).
            pixel_spacing: (row, column) mm, for the area in mm2.
            name: the file name for messages when ``image`` is bytes or an array.
        Returns:
            A ``Prediction`` at the image's own size, with ``warnings`` for unusual inputs.
        Raises:
            ImageReadError: the input cannot be read; ``checks.CannotJudge`` (a subclass) when it can
            be read but is not something the model can judge (too small, blank, noise).
        """
        if isinstance(image, (bytes, bytearray)):
            arr = read_image(name or "<upload>", data=bytes(image))
            source = name or "<upload>"
        elif isinstance(image, np.ndarray):
            arr = image
            source = name or "<array>"
            if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
                raise ImageReadError(source, f"unsupported array shape {arr.shape}")
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[..., 0]
            if arr.dtype.kind == "f":
                arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        else:
            arr = read_image(image)
            source = str(image)
        img = to_uint8_rgb(arr)
        warnings = judge(arr, img, source)
        if not isinstance(image, np.ndarray):
            o = exif_orientation(
                None if isinstance(image, (bytes, bytearray)) else image,
                image if isinstance(image, (bytes, bytearray)) else None,
            )
            if o != 1:
                warnings.append(
                    f"EXIF orientation {o}: photo viewers show this image rotated or mirrored; the mask follows the "
                    "stored pixels (as medical viewers do), so it may not line up with a photo viewer's display"
                )
        thr = float(threshold if threshold is not None else self.threshold)
        probs, uncs = self.probabilities([img], tta=tta)
        return Prediction(
            img,
            probs[0],
            self.mask_from_prob(probs[0], thr),
            thr,
            pixel_spacing,
            uncs[0] if uncs else None,
            source,
            self.info(),
            warnings,
        )

    def predict_study(
        self,
        path: str | os.PathLike,
        series: str | None = None,
        tta: bool = False,
        threshold: float | None = None,
        min_component_mm3: float = 0.0,
        progress: bool = False,
        spacing: tuple[float, float, float] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ):
        """Segment a whole study.

        Args:
            path: NIfTI file; folder of per-sequence NIfTIs or dict {'t1'|'flair'|'t1c': file}; DICOM
                folder or zip; patient folder or zip of numbered slices (see ``studies.read_study``).
            series: DICOM SeriesInstanceUID where the source holds several.
            tta: flip test-time augmentation (adds an uncertainty volume).
            threshold: probability threshold (default: the model's).
            min_component_mm3: drop 3D components smaller than this.
            spacing: (row, column, slice) mm for stacks of 2D slices, which carry no geometry.
            on_progress: called with (slices done, total) after each batch (the page's progress bar).
        Returns:
            A ``StudyPrediction`` (mask, probabilities, measurements, the study and its notes).
        """
        from .studies import Study, read_study

        study = path if isinstance(path, Study) else read_study(path, series=series, spacing=spacing)
        thr = float(threshold if threshold is not None else self.threshold)
        slices = [study.slice_rgb(i) for i in range(study.n_slices)]
        from tqdm import tqdm

        label = Path(study.source).name
        bar = tqdm(total=len(slices), desc=label, unit="slice", disable=not progress, leave=False)

        def report(done: int, total: int) -> None:
            bar.update(done - bar.n)
            if on_progress is not None:
                on_progress(done, total)

        # the network sees each slice upright, as it was trained (geometry.model_turn); the maps come back to
        # the stored grid, where the study's masks, volumes and exports live
        turn = model_turn(study)
        probs, uncs = self.probabilities(
            [turned(s, turn) for s in slices],
            tta=tta,
            stack=True,
            slice_spacing_mm=study.spacing[0] if study.spacing else None,
            on_batch=report,
        )
        bar.close()
        probs = [unturned(p, turn) for p in probs]
        uncs = [unturned(u, turn) for u in uncs] if uncs else uncs
        return self.finish_study(
            study, slices, np.stack(probs), np.stack(uncs) if uncs else None, thr, min_component_mm3
        )

    def finish_study(
        self,
        study,
        images: list[np.ndarray],
        prob: np.ndarray,
        uncertainty: np.ndarray | None,
        threshold: float | None = None,
        min_component_mm3: float = 0.0,
    ):
        """Mask and measurements of a study from its probability volume (no model call).

        ``predict_study`` ends here, and so does the app when only the threshold changes, so the
        page's volume is the CLI's ``study.json`` volume by construction.
        """
        from .studies import StudyPrediction, study_measurements

        thr = float(self.threshold if threshold is None else threshold)
        mask = self.post.with_threshold(thr).apply_stack(prob)
        meas, mask = study_measurements(mask, study.spacing, min_component_mm3)
        return StudyPrediction(
            study=study,
            images=images,
            prob=prob,
            mask=mask,
            threshold=thr,
            measurements=meas,
            uncertainty=uncertainty,
            model=self.info(),
        )

    def rethreshold(self, r: Prediction, threshold: float | None = None) -> Prediction:
        """The same prediction at another threshold (no model call)."""
        thr = float(self.threshold if threshold is None else threshold)
        return Prediction(
            r.image,
            r.prob,
            self.mask_from_prob(r.prob, thr),
            thr,
            r.pixel_spacing,
            r.uncertainty,
            r.source,
            r.meta,
            r.warnings,
        )
