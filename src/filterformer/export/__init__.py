"""Export anomaly maps for the MVTec AD 2 benchmark server: write, check, pack."""

from filterformer.export.checker import Problem, check_submission, format_report, require_valid
from filterformer.export.mvtec_submission import (
    MAPS_DIR,
    MASKS_DIR,
    OFFICIAL_COUNTS,
    PRIVATE_SPLITS,
    expected_stems,
    map_path,
    mask_path,
    record_path,
)
from filterformer.export.pack import pack_submission
from filterformer.export.rescale import MapRescale
from filterformer.export.writer import SubmissionWriter, save_record

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
