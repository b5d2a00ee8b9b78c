"""Export: convert to Core ML with the pruned weights stored sparse, and read saved packages back."""

from .coreml import ExportReport, export_coreml
from .mlpackage import PackageReport, inspect_mlpackage

__all__ = ["ExportReport", "PackageReport", "export_coreml", "inspect_mlpackage"]
