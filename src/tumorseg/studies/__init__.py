"""Whole studies: folders of 2D slices (one patient per folder, as the LGG set), NIfTI volumes and DICOM series
(folder or zip).

A study is read once into a stack of slices with its voxel spacing and geometry, then
mapped with one study-level intensity scaling to the 8-bit RGB the model was trained on.

One module per concern: ``core`` (the Study, limits, intensity and spacing rules), ``names`` (file kinds
and sequence names), ``formats`` (the one list of study formats, naming, ``read_study``), a reader per
format (``nifti``, ``dicom``, ``slices``), ``reference`` (a user's reference mask), ``measure`` and
``outputs``. The public names are importable from here.
"""

from __future__ import annotations

from .core import (  # noqa: F401
    STUDY_BYTES_PER_VOXEL,
    Study,
    StudyError,
    StudyPrediction,
    looks_like_label_map,
    orientation_labels,
    parse_spacing,
    study_to_uint8,
)
from .dicom import read_dicom  # noqa: F401
from .formats import (  # noqa: F401
    FILE_FORMATS,
    FOLDER_FORMATS,
    FileFormat,
    FolderFormat,
    classify_names,
    file_format_of,
    folder_format_of,
    is_study_source,
    looks_like_study_folder,
    read_study,
    strip_extension,
    study_file_suffixes,
    study_name,
)
from .measure import study_measurements  # noqa: F401
from .names import MODEL_CHANNELS, find_sequences, is_single_dicom, sequence_of, sequence_of_series  # noqa: F401
from .nifti import image_to_nifti_slice, nifti_slice_to_image, read_nifti, read_sequences  # noqa: F401
from .outputs import (  # noqa: F401
    LOCAL_CODES,
    TYPE2_COPIED,
    dicom_seg_bytes,
    dicom_seg_dataset,
    dicom_sr_dataset,
    mask_nifti_gz_bytes,
    mask_to_nifti_array,
    study_exports,
    with_type2_attributes,
    write_study_outputs,
)
from .reference import read_reference, reference_from_slice_masks  # noqa: F401
from .slices import read_slices  # noqa: F401
