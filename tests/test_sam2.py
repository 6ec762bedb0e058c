"""SAM2 family: frozen Hiera-T encoder + head, feature cache, export and two-level parity (CPU, random weights)."""

from __future__ import annotations

import csv
import gc
import math

import numpy as np
import pytest
import torch

pytest.importorskip("sam2", reason="sam2 is installed by `make install` (see README 'SAM2')")

from segdeploy.core.config import ModelConfig  # noqa: E402
from segdeploy.core.errors import ConfigError, ModelError  # noqa: E402
from segdeploy.training.feature_cache import HeadFromFeatures, build_feature_cache, prepare_feature_cache  # noqa: E402
from segdeploy.models.registry import build_model, validate_model_config  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

SIZE = 64  # a quarter of the work of 128x128 and still 4x4 stride-16 features: keeps the CPU tests cheap


def sam2_config(**model):
    return ModelConfig(**{"name": "sam2", "encoder": "hiera-t", "encoder_weights": "none", **model})


@pytest.fixture(scope="module")
def hiera_t():
    torch.manual_seed(0)
    return build_model(sam2_config(), 2, SIZE)


def images(count: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_size_not_multiple_of_32_is_a_clear_error():
    with pytest.raises(ConfigError, match="input size 100 is not a multiple of 32.*sam2.*try 96"):
        validate_model_config(sam2_config(), 100)
    with pytest.raises(ConfigError, match="unknown encoder 'hiera-xl'"):
        validate_model_config(ModelConfig(name="sam2", encoder="hiera-xl"), SIZE)


def test_builds_logits_at_input_size_and_encoder_is_frozen(hiera_t):
    model = hiera_t
    model.train()
    assert not model.image_encoder.training and model.head.training
    assert all(not p.requires_grad for p in model.image_encoder.parameters())
    x = images()
    features = model.encode(x)
    assert [tuple(f.shape) for f in features] == [(2, 256, SIZE // 16, SIZE // 16)]
    logits = model(x)
    assert logits.shape == (2, 2, SIZE, SIZE)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    model.zero_grad(set_to_none=True)


def test_encoder_outputs_identical_after_training_steps(hiera_t):
    model = hiera_t
    x = images(1, seed=1)
    with torch.no_grad():
        before = model.image_encoder(x)["vision_features"].clone()
    head_before = [p.detach().clone() for p in model.head.parameters()]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    target = torch.randint(0, 2, (1, SIZE, SIZE))
    for _epoch in range(2):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.image_encoder(x)["vision_features"]
    assert torch.equal(before, after)
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters()))


def test_checkpoint_file_loads_image_encoder_and_bad_files_are_clear_errors(tmp_path):
    torch.manual_seed(1)
    source = build_model(sam2_config(), 2, SIZE)
    state = {f"image_encoder.{k}": v for k, v in source.image_encoder.state_dict().items()}
    state["sam_mask_decoder.unused.weight"] = torch.zeros(1)  # the rest of a SAM2 checkpoint is ignored
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, checkpoint)

    torch.manual_seed(2)
    loaded = build_model(sam2_config(encoder_weights=str(checkpoint)), 2, SIZE)
    for key, value in source.image_encoder.state_dict().items():
        assert torch.equal(value, loaded.image_encoder.state_dict()[key]), key
    x = images(1)
    with torch.no_grad():
        assert torch.equal(source.encode(x)[0], loaded.encode(x)[0])

    with pytest.raises(ModelError, match="SAM2 checkpoint not found: .*missing.pt"):
        build_model(sam2_config(encoder_weights=str(tmp_path / "missing.pt")), 2, SIZE)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read SAM2 checkpoint"):
        build_model(sam2_config(encoder_weights=str(garbage)), 2, SIZE)
    other = tmp_path / "other.pt"
    torch.save({"model": {"encoder.weight": torch.zeros(1)}}, other)
    with pytest.raises(ModelError, match="no image_encoder"):
        build_model(sam2_config(encoder_weights=str(other)), 2, SIZE)
    with pytest.raises(ModelError, match="does not fit SAM2 encoder hiera-s"):
        build_model(ModelConfig(name="sam2", encoder="hiera-s", encoder_weights=str(checkpoint)), 2, SIZE)
    with pytest.raises(ModelError, match="not a checkpoint for encoder hiera-t"):
        build_model(sam2_config(encoder_weights="facebook/sam2.1-hiera-large"), 2, SIZE)
    with pytest.raises(ModelError, match="no 'imagenet' weights"):
        build_model(sam2_config(encoder_weights="imagenet"), 2, SIZE)


def test_fpn_head_from_cached_rows_matches_full_model_and_file_cache_matches_memory(tmp_path):
    from segdeploy.data.registry import build_dataset

    torch.manual_seed(0)
    model = build_model(sam2_config(head="fpn"), 4, SIZE).eval()
    cfg = tiny_config(data={"size": SIZE, "max_images": 2, "synthetic_images": 20})
    dataset = build_dataset(cfg.data, "train")
    in_memory, info = build_feature_cache(model, {"train": dataset}, SIZE, 2, "cpu", False, 64, tmp_path / "c1")
    on_disk, disk_info = build_feature_cache(model, {"train": dataset}, SIZE, 2, "cpu", False, 0, tmp_path / "c2")
    assert info.storage == "memory" and disk_info.storage == "file"
    assert (tmp_path / "c2" / "train-features.npy").is_file()
    assert info.shapes == [[256, SIZE // 4, SIZE // 4], [256, SIZE // 8, SIZE // 8], [256, SIZE // 16, SIZE // 16]]
    assert info.bytes == 2 * 2 * sum(math.prod(s) for s in info.shapes)
    rows = torch.stack([in_memory["train"][i][0] for i in range(2)])
    assert rows.dtype == torch.float16
    assert torch.equal(rows, torch.stack([on_disk["train"][i][0] for i in range(2)]))
    assert torch.equal(in_memory["train"][1][1], torch.from_numpy(dataset.masks[1].astype(np.int64)))

    x = torch.from_numpy(dataset.normalized_batch(range(2)))
    head = HeadFromFeatures(model, info.shapes, SIZE).eval()
    with torch.no_grad():
        full = model(x)
        exact = torch.cat([f.flatten(1) for f in model.encode(x)], 1)
        torch.testing.assert_close(head(exact), full, rtol=1e-5, atol=1e-5)
        assert (head(rows).argmax(1) == full.argmax(1)).float().mean() > 0.99  # FP16 rows, same masks
    del on_disk
    gc.collect()
    assert not (tmp_path / "c2").exists()  # file cache removed once nothing maps it


def test_augmentation_turns_the_cache_off(hiera_t, tmp_path, capsys):
    from segdeploy.data.registry import build_dataset

    cfg = tiny_config(model={"name": "sam2", "encoder": "hiera-t"},
                      data={"size": SIZE, "max_images": 2, "synthetic_images": 20, "augment": "flip"})
    train_set, val_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    net, train_data, val_data, info = prepare_feature_cache(hiera_t, cfg, train_set, val_set, "cpu", tmp_path)
    assert net is hiera_t and train_data is train_set and val_data is val_set and info is None
    assert "feature cache off: training augmentation" in capsys.readouterr().out


def _history(run) -> list[dict]:
    with open(run.history) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory):
    from segdeploy.training.loop import train

    # no augmentation (it turns the cache off) and FP32 (the cached and uncached runs compare to 2e-3)
    cfg = tiny_config(model={"name": "sam2", "encoder": "hiera-t", "encoder_weights": "none"},
                      data={"size": SIZE, "max_images": 4, "synthetic_images": 24, "augment": "none"},
                      train={"batch_size": 2, "max_steps": 2, "epochs": 1, "amp": False})
    return train(cfg, tmp_path_factory.mktemp("sam2") / "cached"), cfg


def test_training_from_cache_gives_the_losses_of_training_without_it(cached_run, tmp_path):
    from segdeploy.core.fileio import read_json
    from segdeploy.training.loop import train

    run, cfg = cached_run
    info = read_json(run.path / "feature_cache.json")
    assert info["storage"] == "memory" and info["images"] == 7 and info["build_seconds"] > 0
    assert info["bytes"] == 7 * 256 * (SIZE // 16) ** 2 * 2
    cfg.train.feature_cache = False
    uncached = train(cfg, tmp_path / "uncached")
    assert not (uncached.path / "feature_cache.json").exists()
    (with_cache,), (without,) = _history(run), _history(uncached)
    # Same images, same order, same head init: only the FP16 rounding of the cached features differs.
    # Adam amplifies that slightly in the updated head, so the validation loss gets a looser tolerance.
    assert float(with_cache["train_loss"]) == pytest.approx(float(without["train_loss"]), rel=2e-3)
    assert float(with_cache["val_loss"]) == pytest.approx(float(without["val_loss"]), rel=1e-2)


def test_export_is_one_folded_graph_with_dynamic_batch_and_parity_passes_at_both_levels(cached_run, monkeypatch):
    import collections

    import onnx

    from segdeploy.export.onnx import export_run
    from segdeploy.core.fileio import read_json
    from segdeploy.core.config import ParityConfig
    from segdeploy.evaluation.parity import run_parity

    run, _ = cached_run
    traced = []
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: traced.append(k["output_names"]) or real_export(*a, **k))
    path = export_run(run)
    # one trace of the encoder gives both graphs: each is that export cut down to its output
    assert traced == [["logits", "vision_features"]]
    sidecar = read_json(run.onnx_sidecar("fp32"))
    assert sidecar["constant_folding"]["nodes_after"] < sidecar["constant_folding"]["nodes_before"]
    for file in (path, path.with_name(sidecar["extra_graphs"]["vision_features"]["file"])):
        graph = onnx.load(str(file))
        ops = collections.Counter(node.op_type for node in graph.graph.node)
        assert ops["LayerNormalization"] == 24 and ops["ReduceMean"] == 0, ops  # Hiera-T: 12 blocks x 2
        assert ops["Tile"] == 0 and ops["If"] == 0, ops
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
        assert len(graph.graph.output) == 1
    # the pos-embed bicubic Resize is folded away: what is left is the neck's nearest upsampling
    # (vision_features graph) plus the head's bilinear upsampling (full graph)
    assert collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)["Resize"] == 2

    report = run_parity(run, ParityConfig(["onnxruntime"], max_images=3, batch_size=3))  # batch 3: not the traced 2
    (masks,) = report["results"]
    assert masks["passed"] and masks["argmax_agreement"] > 0.999 and masks["max_abs_err"] < 1e-3
    (features,) = report["feature_parity"]
    assert features["passed"] and features["images"] == 3 and 0 < features["max_rel_err"] < 1e-4
    assert read_json(run.parity)["feature_parity"][0]["output"] == "vision_features"
