"""slicesr: reduce the slice spacing of thick-slice MR scans, learned from the scans alone."""

__version__ = "0.1.0"
