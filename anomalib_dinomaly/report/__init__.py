"""The HTML test report: metrics beside the paper's, curves, score histograms with thresholds, worst cases.

- :class:`TestReport` (``collector.py``): the Lightning callback that :class:`~anomalib_dinomaly.Dinomaly`
  adds; it writes ``report.html`` into the results folder after every test run.
- :func:`write_folder_report` (``folder.py``): the same kind of page for unlabeled images scored by
  ``examples/infer_folder.py``.
- ``page.py`` renders the HTML, ``figures.py`` the SVG plots, ``overlay.py`` the heat-map thumbnails,
  ``run_info.py`` the facts about the run and the paper comparison.
"""

from anomalib_dinomaly.report.collector import READING_GUIDE, TestReport
from anomalib_dinomaly.report.folder import write_folder_report

__all__ = ["READING_GUIDE", "TestReport", "write_folder_report"]
