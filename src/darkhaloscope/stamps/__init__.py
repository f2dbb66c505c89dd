"""Phase 4b and 4c plumbing: the stamp file format, the seeds' format, coadd caching, cutouts
under Spark and the injection gallery.

Importing this package loads only the stamp-file contract that Phase 5 reads:

- :mod:`~darkhaloscope.stamps.format`: the stamp parquet format (``write_stamp_file``, ``StampFile``,
  ``list_stamp_files``, ``stamps_from_arrow``); float32 nanomaggies, shape (3, 64, 64), bands g, r, z.
- :mod:`~darkhaloscope.stamps.seeds`: the seeds' ``stamp_npz`` Hive layout, converted once
  (``resolve_stamp_root``, ``python -m darkhaloscope.stamps.seeds``).

The Phase 4 work is imported from its modules by the stages that run it (they pull in Spark,
the survey readers and the lensing engines):

- :mod:`~darkhaloscope.stamps.coadd_cache`: stage ``coadds`` (``cache_coadds``).
- :mod:`~darkhaloscope.stamps.cutout`: per-brick WCS cutouts and injection (``process_brick``).
- :mod:`~darkhaloscope.stamps.spark`: the Spark driver (``run_stamps``).
- :mod:`~darkhaloscope.stamps.pipeline`: stage ``stamps`` as one Spark job (``run_stamps_stage``).
- :mod:`~darkhaloscope.stamps.gallery`: ``injection_gallery``.
"""

from darkhaloscope.stamps.format import (
    CTRL_STAMP_COLUMN,
    STAMP_COLUMN,
    StampFile,
    list_stamp_files,
    part_file_name,
    read_columns,
    stamps_from_arrow,
    write_stamp_file,
)
from darkhaloscope.stamps.seeds import convert_seeds_to_stamps, is_seeds_layout, resolve_stamp_root

__all__ = [
    "CTRL_STAMP_COLUMN", "STAMP_COLUMN", "StampFile", "list_stamp_files", "part_file_name", "read_columns",
    "stamps_from_arrow", "write_stamp_file", "convert_seeds_to_stamps", "is_seeds_layout", "resolve_stamp_root",
]
