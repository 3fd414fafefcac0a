"""What DINOv3's train-mode RoPE coordinate rescaling (Meta's ``rescale_coords=2``) changes for Dinomaly.

The Dinomaly2 preview keeps the frozen DINOv3 encoder in train mode while training, so every block draws
a random scale in [1/2, 2] for its patch coordinates in every training forward; at test time (eval mode)
there is none. This script measures, on the golden ``dinomaly2_dinov3`` encoder (small, random, perturbed
weights; Meta's real weights are not available offline) and the golden bottle images:

1. features: the change of every target-layer output and of the two fused encoder groups, both as the
   preview uses them (context-aware recentering: patch tokens minus the group's CLS, affine-free LayerNorm
   eps 1e-8) and plain (Dinomaly v1), between an eval-mode forward and train-mode forwards, and between two
   train-mode forwards; also the per-pixel cosine distance that the loss and the anomaly map are made of;
2. training: a few steps of the Dinomaly network (v1 bottleneck/decoder, the same golden encoder, 256 -> 224
   px, batch 4, the bottle training images) with the rescaling off and on, two seeds each: the training loss
   and, after training, the eval-mode loss on held-out good images and the image scores (mean top-1 % map) of
   the bottle test images.

Usage (about 3 minutes on a quiet 2-core CPU):
    python benchmarks/rope_rescale.py [--draws 8] [--steps 150] [--output results/rope_rescale.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from safetensors.torch import load_file

from anomalib_dinomaly.encoder_dinov3 import DinoV3Encoder
from anomalib_dinomaly.loss import GlobalCosineHardMiningLoss
from anomalib_dinomaly.optim import StableAdamW
from anomalib_dinomaly.torch_model import DinomalyModel, fuse_groups

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden" / "dinomaly2_dinov3"
BOTTLE = SHARED / "data" / "mvtec_ad" / "bottle"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def golden_encoder(config: dict, rescale: float | None) -> DinoV3Encoder:
    """The golden encoder with its stored weights, optionally with the train-mode rescaling."""
    state = load_file(str(GOLDEN / "state_dict.safetensors"))
    encoder = DinoV3Encoder(
        "dinov3_vit_base_16",
        embed_dim=config["embed_dim"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        num_register_tokens=config["num_register_tokens"],
        rope_rescale_coords=rescale,
    )
    encoder.load_pretrained({k[8:]: v for k, v in state.items() if k.startswith("encoder.")}, source="golden")
    return encoder


def recentred(group: torch.Tensor, prefix: int) -> torch.Tensor:
    """Dinomaly2's context-aware recentering of a fused (B, N, D) group: (B, h*w, D)."""
    return F.layer_norm(group[:, prefix:] - group[:, :1], group.shape[-1:], eps=1e-8)


def stats(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Max and mean absolute difference, mean |a|, and mean per-token cosine distance."""
    return {
        "max_abs": float((a - b).abs().max()),
        "mean_abs": float((a - b).abs().mean()),
        "mean_abs_reference": float(a.abs().mean()),
        "mean_cos_dist": float((1 - F.cosine_similarity(a, b, dim=-1)).mean()),
        "max_cos_dist": float((1 - F.cosine_similarity(a, b, dim=-1)).max()),
    }


def feature_changes(config: dict, draws: int) -> dict:
    """Eval vs train-mode features of the golden encoder on the three golden images."""
    forward = load_file(str(GOLDEN / "forward.safetensors"))
    images = ((forward["images_uint8"].float() / 255) - MEAN) / STD
    encoder = golden_encoder(config, rescale=config["rope_rescale_coords_train_only"])
    layers, groups = config["target_layers"], config["fuse_layer_encoder"]
    prefix = encoder.num_prefix_tokens

    def run(train: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        encoder.train(train)
        with torch.no_grad():
            outputs = encoder(images, layers)
        fused = fuse_groups(outputs, groups)
        return outputs, [recentred(g, prefix) for g in fused], [g[:, prefix:] for g in fused]

    reference = run(train=False)
    results: dict[str, list] = {"eval_vs_train": [], "train_vs_train": []}
    previous = None
    for draw in range(draws):
        torch.manual_seed(draw)
        current = run(train=True)
        row = {}
        for kind, ref, cur in zip(("layer", "car_group", "plain_group"), reference, current, strict=True):
            names = [f"{kind}_{i:02d}" for i in layers] if kind == "layer" else [f"{kind}_{g}" for g in range(len(cur))]
            row.update({name: stats(r, c) for name, r, c in zip(names, ref, cur, strict=True)})
        results["eval_vs_train"].append(row)
        if previous is not None:
            results["train_vs_train"].append({
                f"car_group_{g}": stats(p, c) for g, (p, c) in enumerate(zip(previous[1], current[1], strict=True))
            })
        previous = current
    return results


def load_images(paths: list[Path], resize: int, crop: int) -> torch.Tensor:
    """Resize (bilinear), center-crop and normalise: (N, 3, crop, crop)."""
    batch = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((resize, resize), Image.BILINEAR)
        offset = (resize - crop) // 2
        image = image.crop((offset, offset, offset + crop, offset + crop))
        batch.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
    return (torch.stack(batch) - MEAN) / STD


def train_once(config: dict, rescale: float | None, seed: int, steps: int, data: dict) -> dict:
    """A few Dinomaly steps; returns the training losses and the eval-mode results."""
    torch.manual_seed(seed)
    model = DinomalyModel(golden_encoder(config, rescale), target_layers=config["target_layers"])
    loss_fn = GlobalCosineHardMiningLoss(factor=0.1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = StableAdamW(trainable, lr=2e-3, weight_decay=1e-4, amsgrad=True)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in range(steps):
        batch = data["train"][torch.randperm(len(data["train"]), generator=generator)[:4]]
        encoder_groups, decoder_groups = model(batch)
        loss = loss_fn(encoder_groups, decoder_groups, p=min(0.9 * step / 100, 0.9))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_norm=0.1)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        held_out = loss_fn(*model.encode_decode(data["test_good"]), p=0.0)
        scores = model(data["test"]).pred_score
    labels = data["labels"]
    return {
        "train_loss_first10": float(np.mean(losses[:10])),
        "train_loss_last20": float(np.mean(losses[-20:])),
        "eval_loss_test_good": float(held_out),
        "score_good_mean": float(scores[labels == 0].mean()),
        "score_defect_mean": float(scores[labels == 1].mean()),
        "auroc": auroc(scores, labels),
    }


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Image AUROC by pair counting (ties count half)."""
    good, bad = scores[labels == 0], scores[labels == 1]
    wins = (bad[:, None] > good[None, :]).float() + 0.5 * (bad[:, None] == good[None, :]).float()
    return float(wins.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = json.loads((GOLDEN / "config.json").read_text())

    features = feature_changes(config, args.draws)
    summary = {"features": {}}
    for key in features["eval_vs_train"][0]:
        rows = [row[key] for row in features["eval_vs_train"]]
        summary["features"][f"eval_vs_train/{key}"] = {
            stat: [float(np.min([r[stat] for r in rows])), float(np.median([r[stat] for r in rows])),
                   float(np.max([r[stat] for r in rows]))]
            for stat in rows[0]
        }
    for key in features["train_vs_train"][0]:
        rows = [row[key] for row in features["train_vs_train"]]
        summary["features"][f"train_vs_train/{key}"] = {
            stat: [float(np.min([r[stat] for r in rows])), float(np.median([r[stat] for r in rows])),
                   float(np.max([r[stat] for r in rows]))]
            for stat in rows[0]
        }

    test_paths = sorted((BOTTLE / "test").glob("*/*.png"))
    data = {
        "train": load_images(sorted((BOTTLE / "train" / "good").glob("*.png")), 256, 224),
        "test_good": load_images(sorted((BOTTLE / "test" / "good").glob("*.png")), 256, 224),
        "test": load_images(test_paths, 256, 224),
        "labels": torch.tensor([0 if p.parent.name == "good" else 1 for p in test_paths]),
    }
    summary["training"] = {}
    for rescale in (None, config["rope_rescale_coords_train_only"]):
        for seed in range(args.seeds):
            name = f"rescale_{rescale}_seed_{seed}"
            summary["training"][name] = train_once(config, rescale, seed, args.steps, data)
            print(name, json.dumps(summary["training"][name]), flush=True)

    text = json.dumps(summary, indent=1)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
