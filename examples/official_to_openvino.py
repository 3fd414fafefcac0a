"""Deploy weights trained with the official Dinomaly code through anomalib: plugin checkpoint + OpenVINO model.

    python examples/official_to_openvino.py --checkpoint model.pth --data ./datasets/MVTecAD --category bottle \
        --output results/official

``--checkpoint`` is an official ``ViTill`` state dict (``.pth`` or ``.safetensors``; read with
``weights_only=True``); ``--config`` a JSON file with its architecture keys (default: the official
ViT-B/14-reg4 setting). anomalib's thresholds and normalisation are fitted on the validation split of
``--data``/``--category`` (an MVTec-layout folder), then written under ``--output``:

- ``dinomaly.ckpt``: a plugin checkpoint for ``anomalib test/predict/export --model Dinomaly --ckpt_path``;
- ``export/weights/openvino/model.xml``: the OpenVINO model for ``OpenVINOInferencer``;
- ``scores.csv``: torch and OpenVINO scores of the test images, side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="official state dict (.pth / .safetensors)")
    parser.add_argument("--config", type=Path, default=None, help="JSON with the official architecture keys")
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout root for the thresholds")
    parser.add_argument("--category", required=True)
    parser.add_argument("--output", type=Path, default=Path("results/official"))
    parser.add_argument("--image-size", type=int, help="resize (default: the encoder's, 448 for ViT/14, 512 for ViT/16)")
    parser.add_argument("--crop-size", type=int, help="center crop (default: the encoder's, 392 for ViT/14, 448 for ViT/16)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (args.checkpoint, args.config):
        if path is not None and not path.is_file():
            print(f"error: {path} does not exist.", file=sys.stderr)
            return 2
    if not (args.data / args.category / "test").is_dir():
        print(f"error: {args.data / args.category} is not an MVTec-layout category (needs test/).", file=sys.stderr)
        return 2
    logging.getLogger("anomalib").setLevel(logging.WARNING)

    import torch
    from anomalib.data import MVTecAD
    from anomalib.data.utils import read_image
    from anomalib.deploy import ExportType, OpenVINOInferencer
    from anomalib.engine import Engine

    from anomalib_dinomaly import Dinomaly

    config = json.loads(args.config.read_text()) if args.config else None
    sizes = {name: size for name, size in (("image_size", args.image_size), ("crop_size", args.crop_size)) if size}
    model = Dinomaly.from_official_checkpoint(args.checkpoint, config, **sizes)
    output = args.output.resolve()
    datamodule = MVTecAD(root=args.data, category=args.category, eval_batch_size=8, num_workers=0)
    engine = Engine(default_root_dir=output / "runs", logger=False)
    engine.validate(model=model, datamodule=datamodule)  # fits anomalib's thresholds and normalisation
    engine.trainer.save_checkpoint(output / "dinomaly.ckpt")
    model_path = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=output / "export")

    inferencer = OpenVINOInferencer(path=model_path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    model.eval()
    rows = []
    for image_path in sorted((args.data / args.category / "test").glob("*/*.png")):
        with torch.no_grad():
            torch_score = model(read_image(image_path, as_tensor=True).unsqueeze(0)).pred_score.item()
        openvino_score = float(inferencer.predict(image_path).pred_score.squeeze())
        rows.append({"image": f"{image_path.parent.name}/{image_path.name}", "torch": torch_score, "openvino": openvino_score})
    with (output / "scores.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "torch", "openvino"])
        writer.writeheader()
        writer.writerows(rows)
    worst = max((abs(row["torch"] - row["openvino"]) for row in rows), default=0.0)
    print(f"Wrote {output / 'dinomaly.ckpt'}, {model_path} and scores.csv "
          f"({len(rows)} images, max torch/OpenVINO difference {worst:.1e}).")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
