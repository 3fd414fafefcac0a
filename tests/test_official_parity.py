"""Number-for-number parity with the official Dinomaly code, on its golden tensors (shared/golden/official_a)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from anomalib_dinomaly.loss import GlobalCosineHardMiningLoss, hard_mining_fraction
from anomalib_dinomaly.official import from_official_checkpoint
from anomalib_dinomaly.optim import StableAdamW, WarmupCosineLR


@pytest.fixture(scope="module")
def golden(golden_dir):
    data = {}
    for name in ("state_dict", "forward", "eval", "train"):
        data[name] = load_file(str(golden_dir / f"{name}.safetensors"))
    data["config"] = json.loads((golden_dir / "config.json").read_text())
    data["inputs"] = json.loads((golden_dir / "inputs.json").read_text())
    return data


@pytest.fixture(scope="module")
def model(golden):
    return from_official_checkpoint(golden["state_dict"], golden["config"])


def test_encoder_and_groups(model, golden):
    fwd = golden["forward"]
    images = fwd["images"]
    with torch.no_grad():
        tokens = model.encoder.prepare_tokens(images[:1])
        torch.testing.assert_close(tokens, fwd["prepared_tokens_image0"], atol=1e-5, rtol=0)
        layers = model.encoder(images, model.target_layers)
        for index, layer in zip(model.target_layers, layers, strict=True):
            torch.testing.assert_close(layer, fwd[f"encoder_layer_{index:02d}"], atol=2e-6, rtol=1e-5)
        mean_layers = torch.stack(layers, dim=1).mean(dim=1)
        torch.testing.assert_close(model.bottleneck(mean_layers[:1]), fwd["bottleneck_out_image0"], atol=1e-6, rtol=0)
        en, de = model.encode_decode(images)
    for group in range(2):
        torch.testing.assert_close(en[group], fwd[f"en_{group}"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(de[group], fwd[f"de_{group}"], atol=1e-6, rtol=0)


def test_pos_embed_interpolation(model, golden):
    from anomalib_dinomaly.encoder import interpolate_pos_embed

    vit = model.encoder.vit
    grid = interpolate_pos_embed(vit.pos_embed, (37, 37), (28, 28), 0.1)
    reference = golden["forward"]["pos_embed_interpolated"]
    torch.testing.assert_close(grid, reference[:, 1:], atol=1e-6, rtol=0)


def test_evaluation_path(model, golden):
    ev, fwd = golden["eval"], golden["forward"]
    generator = model.anomaly_map_generator
    torch.testing.assert_close(generator.blur.kernel, ev["gaussian_kernel"], atol=1e-7, rtol=0)
    from_golden = generator.compute([fwd["en_0"], fwd["en_1"]], [fwd["de_0"], fwd["de_1"]], (392, 392))
    torch.testing.assert_close(from_golden.per_group, ev["per_group_map_28"], atol=1e-5, rtol=0)
    torch.testing.assert_close(from_golden.input_map, ev["anomaly_map_392"], atol=1e-5, rtol=0)
    torch.testing.assert_close(from_golden.eval_map, ev["anomaly_map_256_smoothed"], atol=1e-5, rtol=0)
    torch.testing.assert_close(from_golden.pred_score, ev["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(generator.smooth(ev["anomaly_map_256"]), ev["anomaly_map_256_smoothed"], atol=1e-5, rtol=0)

    with torch.no_grad():
        end_to_end = model.anomaly_maps(fwd["images"])
        batch = model(fwd["images"])
    torch.testing.assert_close(end_to_end.input_map, ev["anomaly_map_392"], atol=1e-4, rtol=0)
    torch.testing.assert_close(end_to_end.eval_map, ev["anomaly_map_256_smoothed"], atol=1e-4, rtol=0)
    torch.testing.assert_close(end_to_end.pred_score, ev["scores"], atol=1e-4, rtol=0)
    torch.testing.assert_close(batch.pred_score, ev["scores"], atol=1e-4, rtol=0)
    assert batch.anomaly_map.shape == (3, 1, 392, 392)


def test_loss_and_gradients(golden):
    tr = golden["train"]
    names = golden["inputs"]["trainable_parameter_names"]
    loss_fn = GlobalCosineHardMiningLoss(factor=0.1)
    for p, key in ((0.0, "loss_p0"), (0.9, "loss_p09")):
        model = from_official_checkpoint(golden["state_dict"], golden["config"])
        en, de = model.encode_decode(golden["forward"]["images"])
        loss = loss_fn(en, de, p=p)
        torch.testing.assert_close(loss, tr[key], atol=1e-6, rtol=0)
        loss.backward()
    params = dict(_official_named_trainables(model))
    assert list(params) == names
    for name, param in params.items():
        reference = tr[f"grad_p09.{name}"]
        relative = (param.grad - reference).norm() / reference.norm()
        assert relative < 1e-4, f"{name}: relative gradient error {relative:.2e}"
    assert all(p.grad is None for p in model.encoder.parameters())

    total = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=0.1)
    torch.testing.assert_close(total, tr["grad_total_norm"], rtol=1e-5, atol=0)


def test_hard_mining_threshold(golden):
    tr, fwd = golden["train"], golden["forward"]
    for group in range(2):
        mining = GlobalCosineHardMiningLoss.hard_mining_threshold(fwd[f"en_{group}"], fwd[f"de_{group}"], p=0.9)
        torch.testing.assert_close(mining.point_distance, tr[f"point_dist_{group}"], atol=1e-5, rtol=0)
        assert mining.k == golden["inputs"]["reference_values"]["mining_k_p09"][str(group)]
        torch.testing.assert_close(mining.threshold, tr[f"mining_thresh_p09_{group}"], atol=1e-5, rtol=0)


def test_one_optimizer_step_on_golden_gradients(golden):
    tr = golden["train"]
    names = golden["inputs"]["trainable_parameter_names"]
    model = from_official_checkpoint(golden["state_dict"], golden["config"])
    params = dict(_official_named_trainables(model))
    for name, param in params.items():
        param.grad = tr[f"grad_p09.{name}"].clone()
    torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=0.1)
    optimizer = StableAdamW(list(params.values()), lr=2e-3, betas=(0.9, 0.999), eps=1e-10, weight_decay=1e-4)
    optimizer.step()
    for name in names:
        torch.testing.assert_close(params[name].detach(), tr[f"param_after_step.{name}"], atol=1e-6, rtol=0)


def test_stableadamw_sequence(golden):
    """Six steps at the golden learning rates; the update RMS reaches 2.2, so the stable clipping acts."""
    tr = golden["train"]
    assert tr["adamw_seq.rms"].max() > 1.5
    params = [torch.nn.Parameter(tr[f"adamw_seq.init.{i}"].clone()) for i in range(4)]
    optimizer = StableAdamW(params, lr=2e-3, betas=(0.9, 0.999), eps=1e-10, weight_decay=1e-4)
    for step in range(6):
        optimizer.param_groups[0]["lr"] = tr["adamw_seq.lr"][step].item()
        for i, param in enumerate(params):
            param.grad = tr[f"adamw_seq.step{step}.grad.{i}"].clone()
        optimizer.step()
        for i, param in enumerate(params):
            torch.testing.assert_close(param.detach(), tr[f"adamw_seq.step{step}.param.{i}"], atol=1e-6, rtol=0)


def test_lr_and_mining_schedules(golden):
    tr = golden["train"]
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = StableAdamW([param], lr=2e-3)
    scheduler = WarmupCosineLR(optimizer, total_steps=10_000, warmup_steps=100, final_lr_ratio=0.1)
    lrs = []
    for _ in range(10_000):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    torch.testing.assert_close(torch.tensor(lrs, dtype=torch.float64), tr["lr_per_iter_f64"], rtol=1e-12, atol=0)
    mining = torch.tensor([hard_mining_fraction(it) for it in range(10_000)], dtype=torch.float64)
    assert torch.equal(mining, tr["p_per_iter_f64"])


def _official_named_trainables(model):
    """Trainable parameters under their official names, in the official order."""
    for name, param in model.bottleneck.named_parameters():
        yield f"bottleneck.0.{name}", param
    for name, param in model.decoder.named_parameters():
        yield f"decoder.{name}", param
