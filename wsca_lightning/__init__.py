"""wsca_lightning: Weight Space Correlation analysis for PyTorch Lightning."""

__version__ = "0.2.0"
