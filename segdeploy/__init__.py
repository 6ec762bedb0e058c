"""segdeploy: train, export, check and benchmark semantic-segmentation models."""

__version__ = "0.1.0"
