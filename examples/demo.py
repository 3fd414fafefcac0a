"""The main job: train Dinomaly on an MVTec-layout folder, test, export to OpenVINO, infer, write results.

    python examples/demo.py --data ../shared/data/mvtec_ad --category bottle --output results/demo

Writes under ``--output``: ``metrics.md`` / ``metrics.csv`` (anomalib's test metrics), ``predictions.csv``
(OpenVINO score, label and the torch score per test image), ``heatmaps/*.png`` (OpenVINO anomaly map over
the model's input crop), the OpenVINO model and anomalib's run folder (checkpoint, visualisations).

Weights: ``--encoder-weights FILE`` (offline), else the published DINOv2 weights if the Hugging Face hub
is reachable, else RANDOM weights with a loud warning: the pipeline runs, the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import socket
import sys
import time
from pathlib import Path

BANNER = "=" * 78


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True if the Hugging Face hub answers on port 443 (checked before timm retries for a minute)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mvtec_ad"), help="MVTec-layout root")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--output", type=Path, default=Path("results/demo"))
    parser.add_argument("--encoder", default="dinov2reg_vit_small_14", help="DINOv2 variant (small keeps CPU runs short)")
    parser.add_argument("--encoder-weights", type=Path, default=None, help="local DINOv2 weights file")
    parser.add_argument("--steps", type=int, default=20, help="training steps (the paper: 5,000 per category)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, help="resize (default: the encoder's, 448 for ViT/14, 512 for ViT/16)")
    parser.add_argument("--crop-size", type=int, help="center crop (default: the encoder's, 392 for ViT/14, 448 for ViT/16)")
    return parser.parse_args()


def choose_weights(args: argparse.Namespace) -> dict:
    """Model kwargs for the encoder weights, announcing loudly when they are random."""
    if args.encoder_weights is not None:
        print(f"Using local encoder weights {args.encoder_weights}")
        return {"pretrained": False, "encoder_weights": str(args.encoder_weights)}
    if hub_reachable():
        print("Hugging Face hub reachable: downloading the published DINOv2 weights.")
        return {"pretrained": True}
    os.environ["HF_HUB_OFFLINE"] = "1"
    print(f"\n{BANNER}\n  NO NETWORK AND NO --encoder-weights: USING A RANDOMLY INITIALISED ENCODER.\n"
          "  The pipeline runs end to end, but the metrics and heat maps are meaningless.\n"
          "  For real results download dinov2_vits14_reg4_pretrain.pth (Meta) or model.safetensors\n"
          "  (huggingface.co/timm/vit_small_patch14_reg4_dinov2.lvd142m) and pass --encoder-weights FILE\n"
          f"  (make demo DEMO_ARGS='--encoder-weights FILE').\n{BANNER}\n")  # fmt: skip
    return {"pretrained": False}


def write_table(path_md: Path, path_csv: Path, rows: list[dict]) -> None:
    """Write the same rows as a Markdown and a CSV table."""
    columns = list(rows[0])
    with path_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |" for row in rows]
    path_md.write_text("\n".join(lines) + "\n")


def heatmap_overlay(image_path: Path, anomaly_map, image_size: int, crop_size: int):  # noqa: ANN001, ANN201
    """The input crop of ``image_path`` (as the model saw it, un-normalised) blended with a JET heat map."""
    import cv2
    import numpy as np

    from anomalib_dinomaly.deploy import Geometry, crop_box

    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    resized = (image_size, image_size)
    top, left, bottom, right = (round(v) for v in crop_box(resized, Geometry(resized, (crop_size, crop_size))))
    crop = image[top:bottom, left:right]
    heat = np.clip(anomaly_map.squeeze(), 0, 1)
    heat = cv2.resize(heat, (crop_size, crop_size), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return np.concatenate([crop, cv2.addWeighted(crop, 0.5, colour, 0.5, 0)], axis=1)


def main() -> int:
    args = parse_args()
    category_dir = args.data / args.category
    if not (category_dir / "train" / "good").is_dir() or not (category_dir / "test").is_dir():
        print(f"error: {category_dir} is not an MVTec-layout category (needs train/good and test/).", file=sys.stderr)
        return 2
    weights = choose_weights(args)
    started = time.time()
    logging.getLogger("anomalib").setLevel(logging.WARNING)

    import cv2
    import numpy as np
    import torch
    from anomalib.data import MVTecAD
    from anomalib.data.utils import read_image
    from anomalib.deploy import ExportType, OpenVINOInferencer
    from anomalib.engine import Engine

    from anomalib_dinomaly import Dinomaly

    torch.manual_seed(0)
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    sizes = {name: size for name, size in (("image_size", args.image_size), ("crop_size", args.crop_size)) if size}
    model = Dinomaly(encoder_name=args.encoder, **sizes, **weights)
    image_size, crop_size = model.hparams.image_size, model.hparams.crop_size
    datamodule = MVTecAD(
        root=args.data, category=args.category, train_batch_size=args.batch_size, eval_batch_size=args.batch_size,
        num_workers=min(4, os.cpu_count() or 1),
    )  # fmt: skip
    engine = Engine(default_root_dir=output / "runs", max_steps=args.steps, logger=False)
    print(f"Training {args.encoder} for {args.steps} steps on {category_dir} ...")
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    write_table(output / "metrics.md", output / "metrics.csv",
                [{"category": args.category, **{k: float(v) for k, v in sorted(metrics.items()) if "/" not in k}}])  # fmt: skip

    model_path = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=output / "export")
    inferencer = OpenVINOInferencer(path=model_path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    heatmaps = output / "heatmaps"
    heatmaps.mkdir(exist_ok=True)
    rows = []
    model.eval()
    for image_path in sorted((category_dir / "test").glob("*/*.png")):
        prediction = inferencer.predict(image_path)
        with torch.no_grad():
            torch_score = model(read_image(image_path, as_tensor=True).unsqueeze(0)).pred_score.item()
        name = f"{image_path.parent.name}_{image_path.stem}"
        cv2.imwrite(str(heatmaps / f"{name}.png"),
                    heatmap_overlay(image_path, prediction.anomaly_map, image_size, crop_size))  # fmt: skip
        rows.append({
            "image": f"{image_path.parent.name}/{image_path.name}",
            "openvino_score": float(np.squeeze(prediction.pred_score)),
            "openvino_label": int(np.squeeze(prediction.pred_label)),
            "torch_score": torch_score,
        })  # fmt: skip
    with (output / "predictions.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    worst = max(abs(r["openvino_score"] - r["torch_score"]) for r in rows)
    print((output / "metrics.md").read_text())
    print(f"OpenVINO vs torch: max score difference {worst:.2e} over {len(rows)} images")
    print(f"Wrote {output}/metrics.md, metrics.csv, predictions.csv, heatmaps/ ({len(rows)} images), "
          f"export/ in {time.time() - started:.0f} s")  # fmt: skip
    print(f"Test report: {Path(engine.trainer.default_root_dir) / 'report.html'}")
    if not weights.get("pretrained") and "encoder_weights" not in weights:
        print(f"{BANNER}\n  REMINDER: the encoder had RANDOM weights; these numbers are not meaningful.\n{BANNER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
