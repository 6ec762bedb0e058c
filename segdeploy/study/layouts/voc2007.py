"""The first seed study's layout (Pascal VOC 2007): its main table and training time per epoch."""

from __future__ import annotations

from segdeploy.study.layouts.table_input import Metric, TableInput, markdown_table, metric_cells, metric_headers, ours

VOC_METRICS = [Metric("pixel_accuracy", "Pixel Acc %", 100, 2), Metric("miou", "mIoU %", 100, 2),
               Metric("mean_dice", "Mean Dice %", 100, 2), Metric("hd95", "HD95 px", 1, 2)]


def _model_label(config: dict) -> str:
    """The seed's row label in our names: model (encoder, loss)."""
    return f"{config.get('model')} ({config.get('encoder')}, {config.get('loss')})"


def render_voc2007(data: TableInput) -> list[str]:
    with_published = data.published is not None
    rows = [[c["config"], _model_label(c),
             *metric_cells(c["values"], data.published and data.published.find("main", run=c["config"]),
                           VOC_METRICS, with_published)] for c in data.configs]
    lines = ["## Main comparison (seed: Results, main table)", "",
             "Validation split used as the test set. Rates in %, HD95 in pixels.", "",
             *markdown_table(["run", "model", *metric_headers(VOC_METRICS, with_published)], rows, 2)]
    seconds, memory = Metric("epoch_seconds", "s/epoch", 1, 1), Metric("peak_train_memory_mb", "peak train MB", 1, 0)
    cost = [[c["config"], _model_label(c), ours(c["values"]["epoch_seconds"], seconds),
             ours(c["values"]["peak_train_memory_mb"], memory), str(c.get("trained", 0))] for c in data.configs]
    lines += ["## Training time per epoch (seed: Training efficiency)", "",
              "Seconds per epoch including validation, from each run's history.csv; peak training memory is "
              "the CUDA allocator's (– on CPU). The seed publishes no numbers here, only the order: SAM2 "
              "slowest (its frozen Hiera-L encoder still runs every step), DeepLabV3+ moderate, U-Net fastest.", "",
              *markdown_table(["run", "model", "s/epoch", "peak train MB", "runs"], cost, 2)]
    return lines
