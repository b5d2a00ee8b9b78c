"""Export: convert to Core ML with the pruned weights stored sparse (optionally palettized or quantized
jointly), and read saved packages back."""

from .coreml import ExportReport, export_coreml
from .errors import ConversionError, DamagedPackageError, MLPackageError, NotAPackageError
from .mlpackage import PackageReport, inspect_mlpackage, read_weights

__all__ = [
    "ConversionError",
    "DamagedPackageError",
    "ExportReport",
    "MLPackageError",
    "NotAPackageError",
    "PackageReport",
    "export_coreml",
    "inspect_mlpackage",
    "read_weights",
]
