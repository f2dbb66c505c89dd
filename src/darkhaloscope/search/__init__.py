"""The search (stage ``search``): score the whole parent sample, rank the candidates, inspect and grade them.

Modules (imported from their modules, nothing is re-exported here, so that stage ``evaluate``,
which only needs :mod:`~darkhaloscope.search.ensemble`, does not pull in Spark):

- :mod:`~darkhaloscope.search.ensemble`: the models of ``search.models`` (checkpoint paths or
  git tags, resolved like stage ``mine`` resolves ``mine.model``), each member's Platt scaling
  fitted on val, the ensemble score (``search.combine``: mean of calibrated probabilities, or
  mean of normalised ranks), the ensemble-vs-members metrics that stage ``evaluate`` reports.
- :mod:`~darkhaloscope.search.scan`: what is scored (the stamp set's ``parent`` and ``known``
  splits; parent-sample galaxies without a stamp are cut under Spark, as stage ``stamps`` cuts)
  and the streaming, resumable scoring: one fingerprinted parquet part per input unit, GPU-sized
  bf16 batches on CUDA, fixed float32 micro-batches on CPU.
- :mod:`~darkhaloscope.search.catalogue`: ensemble scores, ranks, the cross-match with known
  lenses, the candidate catalogue (parquet, FITS, CSV), the expected purity and
  ``metrics/search.json``.
- :mod:`~darkhaloscope.search.inspect`: the offline inspection page (colour composites as the
  Legacy Surveys viewer renders them, azimuthal-median residuals, Grad-CAM overlays, keyboard
  grading exported as CSV) from the template in ``template/``.
- :mod:`~darkhaloscope.search.pipeline`: the stage as one call, :func:`run_search`.

Grades exported from the page feed the next generation through ``mine.grades``
(:mod:`darkhaloscope.model.mining`).
"""
