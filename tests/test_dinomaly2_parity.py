"""Number-for-number parity with the Dinomaly2 preview code (commit 1745c61) on its golden tensors.

Two folders: ``shared/golden/dinomaly2_a`` (DINOv2 with registers) and ``shared/golden/dinomaly2_dinov3`` (Meta's
DINOv3). Every model is built through ``from_official_checkpoint(state_dict, config.json)`` and every size,
layer and group is read from the folder's config, so another configuration runs through the same tests.
Tolerances are the golden READMEs' (their "recommended tolerance" column).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file

from anomalib_dinomaly.anomaly_map import gaussian_kernel
from anomalib_dinomaly.loss import GlobalCosineHardMiningLoss, hard_mining_percent
from anomalib_dinomaly.official import COMPRESSED_BOTTLENECK_KEYS, from_official_checkpoint
from anomalib_dinomaly.optim import StableAdamW, WarmupCosineLR, trainable_parameter_groups, warmup_cosine_lr
from anomalib_dinomaly.torch_model import fuse_groups
from tests.conftest import SHARED, _require

FOLDERS = ["dinomaly2_a", "dinomaly2_dinov3"]


def _load(folder: str) -> dict:
    root = _require(SHARED / "golden" / folder)
    data = {name: load_file(str(root / f"{name}.safetensors")) for name in ("state_dict", "forward", "eval", "train")}
    data["config"] = json.loads((root / "config.json").read_text())
    data["inputs"] = json.loads((root / "inputs.json").read_text())
    config = data["config"]
    mean = torch.tensor(config["normalize_mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(config["normalize_std"], dtype=torch.float32).view(1, 3, 1, 1)
    data["images"] = ((data["forward"]["images_uint8"].float() / 255) - mean) / std
    return data


@pytest.fixture(scope="module", params=FOLDERS)
def golden(request):
    return _load(request.param)


@pytest.fixture(scope="module")
def golden_a():
    return _load("dinomaly2_a")


def _model(golden):
    return from_official_checkpoint(golden["state_dict"], golden["config"])


def _official_name(name: str) -> str:
    """Our parameter name -> the preview's (``bottleneck.compress.weight`` -> ``bottleneck.0.0.weight``)."""
    for official, ours in COMPRESSED_BOTTLENECK_KEYS.items():
        if name.startswith(ours):
            return official + name.removeprefix(ours)
    return name


def _named_trainables(model) -> dict[str, torch.nn.Parameter]:
    """Bottleneck and decoder parameters under the preview's names, in ``model.named_parameters()`` order."""
    named = {f"bottleneck.{n}": p for n, p in model.bottleneck.named_parameters()}
    named.update({f"decoder.{n}": p for n, p in model.decoder.named_parameters()})
    return {_official_name(name): param for name, param in named.items()}


def _groups(config) -> int:
    return len(config["fuse_layer_encoder"])


def test_weights_load_bitwise_and_model_is_in_eval_mode(golden):
    model = _model(golden)
    assert not model.training
    params = _named_trainables(model)
    assert list(params) == golden["inputs"]["trainable_parameter_names"]
    for name, param in params.items():
        assert torch.equal(param, golden["state_dict"][name]), name


def test_encoder_layers_and_position_encoding(golden):
    fwd, config = golden["forward"], golden["config"]
    model = _model(golden)
    images = golden["images"][:1]
    with torch.no_grad():
        layers = model.encoder(images, model.target_layers)
    for index, layer in zip(model.target_layers, layers, strict=True):
        torch.testing.assert_close(layer, fwd[f"encoder_layer_{index:02d}_image0"], atol=1e-5, rtol=1e-5)
    grid = model.encoder.patch_grid(images)
    if "pos_embed_interpolated" in fwd:  # DINOv2: resampled absolute position embedding (CLS slot first)
        from anomalib_dinomaly.encoder import interpolate_pos_embed

        pos_grid = config["pos_grid"]
        ours = interpolate_pos_embed(model.encoder.vit.pos_embed, (pos_grid, pos_grid), grid, config["interpolate_offset"])
        torch.testing.assert_close(ours, fwd["pos_embed_interpolated"][:, 1:], atol=1e-6, rtol=0)
    if "rope_sin" in fwd:  # DINOv3: RoPE table of the patch grid, from the stored periods
        table = model.encoder.rope_table(grid)
        sin, cos = table.chunk(2, dim=-1)
        torch.testing.assert_close(sin, fwd["rope_sin"], atol=1e-6, rtol=0)
        torch.testing.assert_close(cos, fwd["rope_cos"], atol=1e-6, rtol=0)


def test_bottleneck_decoder_and_recentering_from_golden_layers(golden):
    fwd, config = golden["forward"], golden["config"]
    model = _model(golden)
    prefix = model.encoder.num_prefix_tokens
    layers = [fwd[f"encoder_layer_{index:02d}_image0"] for index in model.target_layers]
    with torch.no_grad():
        bottleneck_in = torch.stack([layers[i] for i in model.fuse_layer_bottleneck], dim=1).mean(dim=1)
        torch.testing.assert_close(bottleneck_in, fwd["bottleneck_in_image0"], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.bottleneck(fwd["bottleneck_in_image0"]), fwd["bottleneck_out_image0"], atol=1e-6, rtol=0)
        x = fwd["bottleneck_out_image0"]
        for index, block in enumerate(model.decoder):
            torch.testing.assert_close(block(x), fwd[f"decoder_block_{index}_image0"], atol=1e-6, rtol=0)
            x = fwd[f"decoder_block_{index}_image0"]
        for group, fused in enumerate(fuse_groups(layers, model.fuse_layer_encoder)):
            centred = fused[:, prefix:] - fused[:, :1]
            torch.testing.assert_close(centred, fwd[f"car_centered_{group}_image0"], atol=1e-5, rtol=0)
            en = model.encoder_group_head(fused, prefix)
            reference = fwd[f"en_{group}_image0"].flatten(2).transpose(1, 2)
            torch.testing.assert_close(en, reference, atol=1e-5, rtol=1e-5)
        decoder_blocks = [fwd[f"decoder_block_{i}_image0"] for i in range(len(model.decoder))][::-1]
        for group, fused in enumerate(fuse_groups(decoder_blocks, model.fuse_layer_decoder)):
            reference = fwd[f"de_{group}_image0"].flatten(2).transpose(1, 2)
            torch.testing.assert_close(fused[:, prefix:], reference, atol=1e-6, rtol=0)
    assert _groups(config) == len(model.fuse_layer_encoder)


def test_encode_decode_end_to_end(golden):
    fwd, config = golden["forward"], golden["config"]
    model = _model(golden)
    with torch.no_grad():
        en, de = model.encode_decode(golden["images"])
    assert len(en) == len(de) == _groups(config)
    for group in range(_groups(config)):
        torch.testing.assert_close(en[group][:1], fwd[f"en_{group}_image0"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(de[group][:1], fwd[f"de_{group}_image0"], atol=1e-6, rtol=0)


def test_anomaly_maps_and_scores(golden):
    ev, fwd = golden["eval"], golden["forward"]
    model = _model(golden)
    size = tuple(golden["images"].shape[-2:])
    image1_key = f"anomaly_map_{size[0]}_image1"
    torch.testing.assert_close(gaussian_kernel(5, 4.0), ev["gaussian_kernel"], atol=1e-7, rtol=0)
    generator = model.anomaly_map_generator
    torch.testing.assert_close(generator.smooth(ev["anomaly_map_256"]), ev["anomaly_map_256_smoothed"], atol=1e-5, rtol=0)
    with torch.no_grad():
        en, de = model.encode_decode(golden["images"])
        maps = model.anomaly_maps(golden["images"])
        batch = model(golden["images"])
    # From the golden per-group maps: the map stages alone.
    golden_groups = ev["per_group_map_28"]
    input_map = F.interpolate(golden_groups, size=size, mode="bilinear", align_corners=True).mean(dim=1, keepdim=True)
    torch.testing.assert_close(input_map[1:2], ev[image1_key], atol=1e-5, rtol=0)
    eval_map = generator.smooth(F.interpolate(input_map, size=256, mode="bilinear", align_corners=False))
    torch.testing.assert_close(eval_map, ev["anomaly_map_256_smoothed"], atol=1e-5, rtol=0)
    torch.testing.assert_close(generator.score(ev["anomaly_map_256_smoothed"]), ev["scores"], atol=1e-5, rtol=0)
    # End to end: encoder -> maps -> scores, and the eval forward.
    torch.testing.assert_close(maps.per_group, golden_groups, atol=1e-5, rtol=0)
    torch.testing.assert_close(maps.input_map[1:2], ev[image1_key], atol=1e-4, rtol=0)
    torch.testing.assert_close(maps.eval_map, ev["anomaly_map_256_smoothed"], atol=1e-4, rtol=0)
    torch.testing.assert_close(maps.pred_score, ev["scores"], atol=1e-4, rtol=0)
    torch.testing.assert_close(batch.pred_score, ev["scores"], atol=1e-4, rtol=0)
    assert batch.anomaly_map.shape == (golden["images"].shape[0], 1, *size)
    assert len(en) == maps.per_group.shape[1]


def _backward(golden, p: float):
    model = _model(golden)
    en, de = model.encode_decode(golden["images"])
    loss = GlobalCosineHardMiningLoss(factor=golden["config"]["loss"]["factor"])(en, de, p=p)
    loss.backward()
    return model, loss


def test_loss_and_gradients(golden):
    tr, inputs = golden["train"], golden["inputs"]
    sample_indices = inputs["sample_indices"]
    for p, key in ((0.0, "p0"), (0.9, "p09")):
        model, loss = _backward(golden, p)
        torch.testing.assert_close(loss.detach(), tr[f"loss_{key}"], atol=1e-6, rtol=0)
        assert all(param.grad is None for param in model.encoder.parameters())
        params = _named_trainables(model)
        for name, param in params.items():
            norm = param.grad.norm()
            torch.testing.assert_close(norm, tr[f"grad_{key}_norm.{name}"], rtol=1e-4, atol=0, msg=name)
            sample = param.grad.flatten()[sample_indices[name]]
            torch.testing.assert_close(sample, tr[f"grad_{key}_sample.{name}"], rtol=1e-4, atol=1e-7, msg=name)
            if f"grad_{key}.{name}" in tr:
                reference = tr[f"grad_{key}.{name}"]
                relative = (param.grad - reference).norm() / reference.norm()
                assert relative < 1e-4, f"{name}: relative gradient error {relative:.2e}"
    total = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=golden["config"]["clip_grad_norm_max_norm"])
    torch.testing.assert_close(total, tr["grad_total_norm"], rtol=1e-5, atol=0)


def test_hard_mining_internals(golden):
    tr, fwd = golden["train"], golden["forward"]
    model = _model(golden)
    with torch.no_grad():
        en, de = model.encode_decode(golden["images"])
    for group in range(_groups(golden["config"])):
        point_dist = 1 - F.cosine_similarity(en[group], de[group], dim=1).unsqueeze(1)
        torch.testing.assert_close(point_dist, tr[f"point_dist_{group}"], atol=1e-5, rtol=0)
        k = int(point_dist.numel() * (1 - 0.9))
        assert k == golden["inputs"]["reference_values"]["mining_k_p09"][str(group)]
        threshold = torch.topk(point_dist.reshape(-1), k).values[-1]
        torch.testing.assert_close(threshold, tr[f"mining_thresh_p09_{group}"], atol=1e-5, rtol=0)
        assert torch.equal((point_dist < threshold).float(), tr[f"mining_downweighted_p09_{group}"])
    del fwd


def _dinomaly2_optimizer(model, config, nonfinite_grads: str = "skip_step") -> StableAdamW:
    """The preview's optimiser through this package's parameter groups, its lrs from the config."""
    settings = config["optimizer"]
    base_lr = settings["param_groups"][1]["lr"]
    ratio = settings["param_groups"][0]["lr"] / base_lr
    groups = trainable_parameter_groups(model.bottleneck, model.decoder, base_lr, first_layer_lr_ratio=ratio)
    return StableAdamW(
        groups,
        lr=base_lr,
        betas=tuple(settings["betas"]),
        eps=settings["eps"],
        weight_decay=settings["weight_decay"],
        amsgrad=settings["amsgrad"],
        clip_threshold=settings["clip_threshold"],
        nonfinite_grads=nonfinite_grads,
    )


def test_parameter_groups_and_first_scheduled_lr(golden):
    config, inputs = golden["config"], golden["inputs"]
    model = _model(golden)
    optimizer = _dinomaly2_optimizer(model, config)
    names = {id(p): n for n, p in _named_trainables(model).items()}
    expected_prefixes = ["bottleneck.0.", "bottleneck.1.", "decoder."]
    assert len(optimizer.param_groups) == len(expected_prefixes)
    order = []
    for group, prefix, spec in zip(optimizer.param_groups, expected_prefixes, config["optimizer"]["param_groups"], strict=True):
        group_names = [names[id(p)] for p in group["params"]]
        assert all(name.startswith(prefix) for name in group_names)
        assert group["lr"] == pytest.approx(spec["lr"], rel=1e-12)
        order += group_names
    assert order == inputs["trainable_parameter_names"]
    scheduler_settings = config["scheduler"]
    WarmupCosineLR(
        optimizer,
        total_steps=scheduler_settings["total_epochs"],
        warmup_steps=scheduler_settings["warmup_epochs"],
        final_lr_ratio=scheduler_settings["final_ratio_script_default"],
        warmup_includes_end=False,
    )
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs == inputs["reference_values"]["lr_at_first_iteration_in_script"]


def _clipped_golden_step(golden, use_golden_grads: bool):
    config, tr = golden["config"], golden["train"]
    max_norm = config["clip_grad_norm_max_norm"]
    if use_golden_grads:
        # Only a subset of the gradients is stored in full: clip them with the stored total norm (the clip
        # coefficient of clip_grad_norm_), and leave the others without a gradient (the step skips them).
        model = _model(golden)
        params = _named_trainables(model)
        coefficient = torch.clamp(max_norm / (tr["grad_total_norm"] + 1e-6), max=1.0)
        for name, param in params.items():
            param.grad = tr[f"grad_p09.{name}"] * coefficient if f"grad_p09.{name}" in tr else None
    else:
        model, _ = _backward(golden, 0.9)
        params = _named_trainables(model)
        torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=max_norm)
    optimizer = _dinomaly2_optimizer(model, config)
    for group, lr in zip(optimizer.param_groups, golden["inputs"]["reference_values"]["group_lrs_used_for_golden_step"], strict=True):
        group["lr"] = lr
    optimizer.step()
    return params, optimizer


def test_one_optimizer_step_from_golden_gradients(golden):
    tr = golden["train"]
    params, optimizer = _clipped_golden_step(golden, use_golden_grads=True)
    for name, param in params.items():
        if f"param_after_step.{name}" in tr:
            torch.testing.assert_close(param.detach(), tr[f"param_after_step.{name}"], atol=1e-6, rtol=0, msg=name)
            assert abs(optimizer.state[param]["last_rms"] - tr[f"stableadamw_rms.{name}"].item()) < 1e-6, name


def test_one_optimizer_step_end_to_end(golden):
    tr, sample_indices = golden["train"], golden["inputs"]["sample_indices"]
    params, optimizer = _clipped_golden_step(golden, use_golden_grads=False)
    for name, param in params.items():
        sample = param.detach().flatten()[sample_indices[name]]
        torch.testing.assert_close(sample, tr[f"param_after_step_sample.{name}"], atol=1e-4, rtol=0, msg=name)
        assert abs(optimizer.state[param]["last_rms"] - tr[f"stableadamw_rms.{name}"].item()) < 1e-3, name


def test_lr_tables_and_mining_schedule(golden_a):
    tr, config = golden_a["train"], golden_a["config"]
    settings = config["scheduler"]
    total, warmup = settings["total_epochs"], settings["warmup_epochs"]
    group_lrs = [group["lr"] for group in config["optimizer"]["param_groups"]]
    for ratio, key in ((1.0, "lr_table_final_ratio_1"), (0.1, "lr_table_final_ratio_0p1")):
        table = tr[key]
        assert table.shape == (total, 2)
        for column, base in ((0, group_lrs[0]), (1, group_lrs[1])):
            ours = torch.tensor(
                [warmup_cosine_lr(it, base, base * ratio, total, warmup, warmup_includes_end=False) for it in range(total)],
                dtype=torch.float64,
            )
            torch.testing.assert_close(ours, table[:, column], rtol=1e-12, atol=0)
        # The scheduler object steps through the same values (first 2 * warm-up steps, three groups).
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = StableAdamW([{"params": [param], "lr": group_lrs[0]}, {"params": [], "lr": group_lrs[1]}])
        scheduler = WarmupCosineLR(optimizer, total, warmup, final_lr_ratio=ratio, warmup_includes_end=False)
        for it in range(2 * warmup):
            lrs = [group["lr"] for group in optimizer.param_groups]
            torch.testing.assert_close(torch.tensor(lrs, dtype=torch.float64), table[it], rtol=1e-12, atol=0)
            optimizer.step()
            scheduler.step()
    p_table = torch.tensor([hard_mining_percent(it) for it in range(total)], dtype=torch.float64)
    assert torch.equal(p_table, tr["p_table"])


def _run_adamw_sequence(tr, plan, nonfinite_grads: str):
    params = [torch.nn.Parameter(tr[f"adamw_seq.init.{i}"].clone()) for i in range(4)]
    optimizer = StableAdamW(
        [{"params": params[:2], "lr": tr["adamw_seq.lr"][0, 0].item()}, {"params": params[2:]}],
        lr=2e-3, betas=(0.9, 0.999), eps=1e-10, weight_decay=1e-4, amsgrad=False, nonfinite_grads=nonfinite_grads,
    )  # fmt: skip
    for step in range(len(plan)):
        for group, lr in zip(optimizer.param_groups, tr["adamw_seq.lr"][step].tolist(), strict=True):
            group["lr"] = lr
        for i, param in enumerate(params):
            key = f"adamw_seq.step{step}.grad.{i}"
            param.grad = tr[key].clone() if key in tr else None
        before = [(param.detach().clone(), optimizer.state[param].get("step", 0)) for param in params]
        optimizer.step()
        yield step, params, optimizer, before


def test_stableadamw_sequence_preview_partial_skip(golden_a):
    """``nonfinite_grads="preview"`` reproduces the preview's partial skip of a NaN/Inf step, state for state."""
    tr, plan = golden_a["train"], golden_a["inputs"]["adamw_seq_plan"]
    for step, params, optimizer, before in _run_adamw_sequence(tr, plan, "preview"):
        for i, param in enumerate(params):
            state = optimizer.state[param]
            torch.testing.assert_close(param.detach(), tr[f"adamw_seq.step{step}.param.{i}"], atol=1e-6, rtol=0)
            torch.testing.assert_close(state["exp_avg"], tr[f"adamw_seq.step{step}.exp_avg.{i}"], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(state["exp_avg_sq"], tr[f"adamw_seq.step{step}.exp_avg_sq.{i}"], rtol=1e-5, atol=0)
            assert state["step"] == tr["adamw_seq.state_step"][step, i].item()
            reference = tr["adamw_seq.rms"][step, i].item()
            if math.isnan(reference):
                assert state["step"] == before[i][1], f"step {step} param {i} should not have been reached"
            else:
                assert abs(state["last_rms"] - reference) <= 1e-4 * abs(reference) + 1e-12


def test_stableadamw_sequence_whole_step_skip(golden_a):
    """``"skip_step"`` (Dinomaly2's default here) leaves every parameter and state alone on a NaN/Inf step and
    matches the preview until the first one."""
    tr, plan = golden_a["train"], golden_a["inputs"]["adamw_seq_plan"]
    first_bad = next(s["step"] for s in plan if s["special"] in ("nan_p2", "inf_p0"))
    for step, params, optimizer, before in _run_adamw_sequence(tr, plan, "skip_step"):
        nonfinite = plan[step]["special"] in ("nan_p2", "inf_p0")
        for i, param in enumerate(params):
            if nonfinite:
                assert torch.equal(param.detach(), before[i][0]) and optimizer.state[param].get("step", 0) == before[i][1]
            elif step < first_bad:
                torch.testing.assert_close(param.detach(), tr[f"adamw_seq.step{step}.param.{i}"], atol=1e-6, rtol=0)


def test_stableadamw_long_sequence_without_amsgrad(golden_a):
    tr = golden_a["train"]
    params = [torch.nn.Parameter(tr[f"adamw_seq_long.init.{i}"].clone()) for i in range(2)]
    optimizer = StableAdamW(
        [{"params": [params[0]], "lr": 2e-4}, {"params": [params[1]], "lr": 2e-3}],
        betas=(0.9, 0.999), eps=1e-10, weight_decay=1e-4, amsgrad=False,
    )  # fmt: skip
    grads = [tr[f"adamw_seq_long.grads.{i}"] for i in range(2)]
    history = [[], []]
    for step in range(grads[0].shape[0]):
        for i, param in enumerate(params):
            param.grad = grads[i][step].clone()
        optimizer.step()
        for i, param in enumerate(params):
            history[i].append(param.detach().clone())
    for i, param in enumerate(params):
        torch.testing.assert_close(torch.stack(history[i]), tr[f"adamw_seq_long.params.{i}"], atol=1e-6, rtol=0)
        torch.testing.assert_close(optimizer.state[param]["exp_avg_sq"], tr[f"adamw_seq_long.final_exp_avg_sq.{i}"], rtol=1e-5, atol=0)
