"""Export anomaly maps for the MVTec AD 2 benchmark server: write, check, pack."""

from filterformer.submission.checker import Problem, check_submission, format_report, require_valid
from filterformer.submission.mvtec_submission import (
    MAPS_DIR,
    MASKS_DIR,
    OFFICIAL_COUNTS,
    PRIVATE_SPLITS,
    expected_stems,
    map_path,
    mask_path,
    record_path,
)
from filterformer.submission.pack import pack_submission
from filterformer.submission.rescale import MapRescale
from filterformer.submission.writer import SubmissionWriter, save_record

__all__ = [
    "MAPS_DIR",
    "MASKS_DIR",
    "OFFICIAL_COUNTS",
    "PRIVATE_SPLITS",
    "MapRescale",
    "Problem",
    "SubmissionWriter",
    "check_submission",
    "expected_stems",
    "format_report",
    "map_path",
    "mask_path",
    "pack_submission",
    "record_path",
    "require_valid",
    "save_record",
]
