"""Scoring runs: validation and held-out scores (``evaluate``), unknown detectors measured by
holding out classes (``openset``), likely label errors and outliers (``find_issues``), one HTML
page per run (``report``), photos the unknown detector rejects grouped into candidate new
classes (``cluster_unknowns``), and the PNGs.

>>> from heads.evaluation import evaluate, MEASURES
"""

from heads.evaluation._evaluate import MEASURES, EvalResult, evaluate
from heads.evaluation._issues import IssuesResult, Outlier, Suspect, find_issues
from heads.evaluation._openset import format_table as format_openset_table
from heads.evaluation._openset import openset, openset_arrays
from heads.evaluation._report import ReportResult, report
from heads.evaluation._unknown_clusters import UnknownCluster, UnknownClusters, cluster_unknowns

__all__ = [
    "MEASURES",
    "EvalResult",
    "IssuesResult",
    "Outlier",
    "ReportResult",
    "Suspect",
    "UnknownCluster",
    "UnknownClusters",
    "cluster_unknowns",
    "evaluate",
    "find_issues",
    "format_openset_table",
    "openset",
    "openset_arrays",
    "report",
]
