"""filterformer: Filter-Former and INP-Former for industrial anomaly detection on MVTec AD 2."""

__version__ = "0.1.0"
