"""DESI Legacy Survey DR10 access: brick naming, sweep and coadd readers, and the
embedded mock survey writer. Readers take a root that is a local directory or an
``s3://bucket/prefix``; the mock survey is written in the same layout so the
same readers serve both."""

from darkhaloscope.survey.bricks import brick_name, brick_wcs, coadd_relpath  # noqa: F401
from darkhaloscope.errors import SurveyError  # noqa: F401
from darkhaloscope.survey.sweeps import REQUIRED_COLUMNS, read_sweep, read_sweeps  # noqa: F401
from darkhaloscope.survey.coadds import find_coadd, read_coadd  # noqa: F401
