"""A study's outputs: the mask as NIfTI in the input's geometry, DICOM-SEG and the TID 1500 report for DICOM
input, overlays and study.json (what the CLI writes, the page downloads and the PACS receives)."""

from __future__ import annotations

import io as _io
import json
from pathlib import Path

import numpy as np

from ..imaging.files import atomic_write_bytes
from ..imaging.geometry import display_turn, turned
from ..imaging.images import write_png
from ..imaging.render import heatmap_overlay
from ..version import __version__
from .core import Study, StudyPrediction
from .nifti import image_to_nifti_slice


def mask_to_nifti_array(sp: StudyPrediction) -> np.ndarray:
    """Mask in the input NIfTI's own array layout (X, Y, Z)."""
    m = sp.mask.astype(np.uint8)
    return np.stack([image_to_nifti_slice(m[k]) for k in range(m.shape[0])], axis=2)


def study_exports(st: Study) -> list[str]:
    """The mask files a study can be exported as (the CLI writes them, the page offers them)."""
    return ["mask.nii.gz"] + (["mask_seg.dcm"] if st.kind == "dicom" and st.dicom else [])


def mask_nifti_gz_bytes(sp: StudyPrediction) -> bytes:
    """The study's ``mask.nii.gz``: the mask in the input's geometry (NIfTI layout and affine as read)."""
    return label_nifti_gz_bytes(sp.study, sp.mask.astype(np.uint8))


def label_nifti_gz_bytes(st: Study, labels: np.ndarray) -> bytes:
    """A Z x H x W uint8 label volume on a study's grid (a mask, a follow-up's change map) as gzipped NIfTI in
    the input's geometry."""
    import nibabel as nib

    labels = labels.astype(np.uint8)
    if st.kind == "nifti":
        arr = np.stack([image_to_nifti_slice(labels[k]) for k in range(labels.shape[0])], axis=2)
        affine = st.affine
    else:
        arr = np.transpose(labels, (2, 1, 0))  # (col, row, slice)
        affine = st.affine if st.affine is not None else np.eye(4)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    return _gz(img.to_bytes())


def write_study_outputs(sp: StudyPrediction, out: Path, extra: dict | None = None) -> list[Path]:
    """mask volume (NIfTI, plus DICOM-SEG for DICOM input), overlay PNGs per slice, study.json (last;
    ``extra`` adds the batch's run record to it)."""

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    export_errors: list[str] = []
    st = sp.study
    target = out / "mask.nii.gz"
    atomic_write_bytes(target, mask_nifti_gz_bytes(sp))
    written.append(target)
    if "mask_seg.dcm" in study_exports(st):
        try:
            target = out / "mask_seg.dcm"
            atomic_write_bytes(target, dicom_seg_bytes(sp))
            written.append(target)
        except Exception as exc:  # never lose the other outputs, but the study counts as failed
            export_errors.append(f"DICOM-SEG not written: {type(exc).__name__}: {exc}")

    ov = out / "overlays"
    turn = display_turn(st)  # as the page shows the study: radiological, anterior up (one rule for both)
    for k in range(st.n_slices):  # the page's Overlay PNG: FLAIR in grey under the heatmap, turned as on screen
        grey = np.repeat(sp.images[k][..., 1:2], 3, axis=-1)
        write_png(ov / f"slice{k + 1:04d}_overlay.png", turned(heatmap_overlay(grey, sp.prob[k]), turn))
    shown = {
        "display": {
            **turn,
            "overlays": "overlays/sliceNNNN_overlay.png: FLAIR in grey under the heatmap, turned as the page shows "
            "the study (the page's Overlay PNG of that slice is <study>_sliceNNNN_overlay.png)",
        }
    }
    summary = {
        **sp.summary(),
        **shown,
        **({"export_errors": export_errors} if export_errors else {}),
        **(extra or {}),
    }
    atomic_write_bytes(out / "study.json", (json.dumps(summary, indent=1) + "\n").encode())
    written.append(out / "study.json")
    return written


def _gz(b: bytes) -> bytes:
    import gzip

    return gzip.compress(b, compresslevel=6, mtime=0)


def dicom_seg_bytes(sp: StudyPrediction) -> bytes:
    """A binary DICOM-SEG (highdicom) referencing the source series."""
    buf = _io.BytesIO()
    dicom_seg_dataset(sp).save_as(buf)
    return buf.getvalue()


# Type 2 attributes (present, may be empty) of the Patient and General Study modules that highdicom
# copies from the source images into a SEG or SR; some archives and anonymisers drop them entirely.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip


def with_type2_attributes(ds):
    """A shallow copy of a source image with absent type 2 attributes present and empty, as the standard
    allows: highdicom reads them unconditionally (``AttributeError`` on a series without, e.g.,
    PatientBirthDate), and an empty value is what the derived object should carry then."""
    import copy

    missing = [k for k in TYPE2_COPIED if k not in ds]
    if not missing:
        return ds
    out = copy.copy(ds)
    for k in missing:
        setattr(out, k, "")
    return out


def dicom_seg_dataset(sp: StudyPrediction):
    """The study's mask as a binary DICOM-SEG dataset (highdicom) referencing the source series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    dss = [with_type2_attributes(ds) for ds in sp.study.dicom]
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour (FLAIR abnormality)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="tumorseg", version=__version__, family=codes.DCM.ArtificialIntelligence
        ),
    )
    mask = sp.mask.astype(np.uint8)
    if sp.study.frame_order is not None:  # a multi-frame source: the SEG's frames follow the source's frames
        stored = np.zeros_like(mask)
        stored[sp.study.frame_order] = mask
        mask = stored
    seg = hd.seg.Segmentation(
        source_images=dss,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="tumorseg",
        manufacturer_model_name="tumorseg U-Net ResNet50",
        software_versions=__version__,
        device_serial_number="0",
        series_description="tumorseg AI mask (research)",
    )
    return seg


LOCAL_CODES = "99TUMORSEG"  # a private coding scheme for what DICOM has no code for


def dicom_sr_dataset(sp: StudyPrediction, seg, tracking: tuple[str, str] | None = None, extra: list | None = None):
    """A TID 1500 measurement report (highdicom Comprehensive 3D SR) on the DICOM-SEG ``seg``: the
    tumour volume, the largest in-plane diameter and the number of slices with tumour, as study.json.
    ``tracking``: (UID, identifier) a follow-up shares between time points (default: a new one);
    ``extra``: further measurements as (code, meaning, value, UCUM unit, unit meaning), in our local scheme."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    m = sp.measurements
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="tumorseg", manufacturer_name="tumorseg", model_name=f"tumorseg {__version__}"
        ),
    )
    measurements = []
    if m.get("volume_ml") is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.SCT.Volume, value=float(m["volume_ml"]), unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter")
            )
        )
    if m.get("largest_diameter_mm") is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.SCT.Diameter, value=float(m["largest_diameter_mm"]), unit=codes.UCUM.Millimeter
            )
        )
    measurements.append(
        hd.sr.Measurement(
            name=hd.sr.CodedConcept("tumour-slices", LOCAL_CODES, "Slices with tumour"),
            value=float(m["slices_with_tumour"]),
            unit=hd.sr.CodedConcept("{slices}", "UCUM", "slices"),
        )
    )
    for code, meaning, value, unit, unit_meaning in extra or []:
        measurements.append(
            hd.sr.Measurement(
                name=hd.sr.CodedConcept(code, LOCAL_CODES, meaning),
                value=value,
                unit=hd.sr.CodedConcept(unit, "UCUM", unit_meaning),
            )
        )
    uid, ident = tracking or (hd.UID(), "tumour (FLAIR abnormality)")
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=ident),
        referenced_segment=hd.sr.ReferencedSegment(  # the source series, which holds even for an empty mask
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(str(sp.study.dicom[0].SeriesInstanceUID)),
        ),
        finding_type=codes.SCT.Neoplasm,
        measurements=measurements,
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=hd.sr.CodedConcept("24590-2", "LN", "MR Brain"),
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="tumorseg",
        series_description="tumorseg AI measurements (research)",
    )
