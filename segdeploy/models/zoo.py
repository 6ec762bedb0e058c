"""What a model costs: parameters and forward GFLOPs at an input size, counted on the meta device.

Nothing is allocated or cached: the model is built on torch's meta device (shapes only) and one forward
is counted by torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls; 1 multiply-add = 2 FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from segdeploy.core.config import ModelConfig
from segdeploy.core.errors import SegdeployError
from segdeploy.core.size import input_hw
from segdeploy.models.registry import MODELS, build_model, count_parameters


@dataclass(frozen=True)
class ModelCost:
    encoder: str
    params: int | None
    gflops: float | None
    note: str = ""  # why the model cannot be built at this size/stride


def _count(cfg: ModelConfig, size: int | list[int], num_classes: int, device: str) -> tuple[int, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    height, width = input_hw(size)
    with torch.device(device):
        model = build_model(cfg, num_classes, size).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    return count_parameters(model), counter.get_total_flops() / 1e9


def model_cost(cfg: ModelConfig, size: int | list[int], num_classes: int = 2) -> ModelCost:
    """Counted on the meta device; models whose forward reads a value (mit_b*: .item()) on the CPU."""
    try:
        try:
            params, gflops = _count(cfg, size, num_classes, "meta")
        except SegdeployError:
            raise
        except Exception:  # noqa: BLE001 - a forward that needs real values
            params, gflops = _count(cfg, size, num_classes, "cpu")
    except SegdeployError as exc:
        return ModelCost(cfg.encoder, None, None, str(exc))
    except Exception as exc:  # noqa: BLE001 - an encoder smp lists but cannot build here: say why, go on
        return ModelCost(cfg.encoder, None, None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
    return ModelCost(cfg.encoder, params, gflops)


def family_costs(cfg: ModelConfig, size: int | list[int], encoders: list[str] | None = None) -> list[ModelCost]:
    """One ModelCost per encoder of cfg.name (all listed encoders unless `encoders` names some)."""
    names = encoders or list(MODELS[cfg.name].encoders())
    return [model_cost(replace(cfg, encoder=name), size) for name in names]
