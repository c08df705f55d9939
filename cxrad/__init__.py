"""cxrad: abnormal chest X-ray detection by dual-distribution discrepancy (DDAD) and ASR-Net."""

__version__ = "0.1.0"
