"""Export: convert to Core ML (or Core AI) with the pruned weights stored sparse (optionally palettized or
quantized jointly), and read saved packages back."""

from .coreai import CoreAIExportReport, ExportMismatchError, export_coreai
from .coreml import ExportReport, export_coreml
from .errors import ConversionError, DamagedPackageError, MLPackageError, NotAPackageError
from .mlpackage import PackageReport, inspect_mlpackage, read_weights

__all__ = [
    "ConversionError",
    "CoreAIExportReport",
    "DamagedPackageError",
    "ExportMismatchError",
    "ExportReport",
    "MLPackageError",
    "NotAPackageError",
    "PackageReport",
    "export_coreai",
    "export_coreml",
    "inspect_mlpackage",
    "read_weights",
]
