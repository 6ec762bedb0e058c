"""The settings of the deploy layer's commands (a section of core/config.py's Config each; their numeric
ranges are in core/validate.py RULES)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PredictConfig:
    backend: str | None = None  # a runtime variant; None: the one `segdeploy deploy` chose, else torch
    precision: str | None = None  # graph precision; None: the deployed one, else fp32
    batch_size: int = 8
    overlay: bool = False  # also write blended JPEG overlays
    overwrite: bool = False  # redo images whose mask exists
    device: str = "cpu"
    threads: int | None = None
    workers: int = 2  # decoding threads, and as many encoding threads
    max_megapixels: float | None = None  # larger image files are skipped; None: the run's data.max_megapixels


@dataclass
class DeployConfig:
    """`segdeploy deploy`: the fastest measured variant within an accuracy budget of torch fp32."""

    objective: str = "latency"  # latency (p50 of one call) | throughput (images/s)
    batch: int | None = None  # rank this measured batch size only; None: any
    max_miou_drop: float = 0.5  # mIoU points below torch fp32 on the same images
    min_agreement: float = 0.98  # argmax agreement with torch fp32 (fraction of pixels)
