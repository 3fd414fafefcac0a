"""Score a folder of images with a trained Dinomaly: CSV of scores and labels, heat maps on the original images.

The model is either an exported OpenVINO IR (``model.xml``) or ONNX file, run by anomalib's
``OpenVINOInferencer``, or a Lightning checkpoint (``*.ckpt``), run as the torch model. The model sees a
resized, center-cropped image; its map is placed back on the region of the original image it covers,
using the resize / crop sizes stored in the exported file (or the checkpoint's pre-processor). The rest of
the image, which the model never saw, stays uncoloured.

Examples:
    python examples/infer_folder.py --model results/export/weights/openvino/model.xml \\
        --input ../shared/data/mvtec_ad/bottle/test --output results/infer
    python examples/infer_folder.py --model results/DinomalyPlugin/MVTecAD/bottle/latest/weights/lightning/model.ckpt \\
        --input ../shared/data/mvtec_ad/bottle/test --output results/infer-torch
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from anomalib.data.utils import read_image
from anomalib.visualization.image.functional import add_text_to_image, apply_colormap, overlay_image
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from anomalib_dinomaly.deploy import Geometry, read_geometry, transform_geometry, uncrop_anomaly_map
from anomalib_dinomaly.report import write_folder_report


class Prediction(NamedTuple):
    """One image's result: normalised score and map (0.5 = threshold) and the label."""

    score: float
    label: bool
    anomaly_map: np.ndarray  # (h, w) on the model input


Predictor = Callable[[np.ndarray], Prediction]  # (H, W, 3) float image in [0, 1] -> Prediction


def openvino_predictor(path: Path, device: str, precision: str | None) -> tuple[Predictor, Geometry]:
    """anomalib's ``OpenVINOInferencer`` on an ``.xml`` / ``.onnx`` file; a static-size model gets resized input."""
    from anomalib.deploy import OpenVINOInferencer

    config = {"INFERENCE_PRECISION_HINT": precision} if precision else None
    inferencer = OpenVINOInferencer(path, device=device, config=config)
    shape = inferencer.input_blob.partial_shape
    static = (shape[2].get_length(), shape[3].get_length()) if shape[2].is_static and shape[3].is_static else None

    def predict(image: np.ndarray) -> Prediction:
        if static is not None and image.shape[:2] != static:
            image = resize(image, static)
        result = inferencer.predict(image)
        return Prediction(
            float(np.asarray(result.pred_score).ravel()[0]),
            bool(np.asarray(result.pred_label).ravel()[0]),
            np.asarray(result.anomaly_map).squeeze(),
        )

    return predict, read_geometry(path)


def torch_predictor(path: Path, device: str) -> tuple[Predictor, Geometry]:
    """The Lightning checkpoint's model, in eval mode (pre-processing, model and normalisation in one call)."""
    from anomalib_dinomaly import Dinomaly

    model = Dinomaly.load_from_checkpoint(path, map_location=device).eval()

    @torch.inference_mode()
    def predict(image: np.ndarray) -> Prediction:
        batch = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
        result = model(batch)
        return Prediction(float(result.pred_score), bool(result.pred_label), result.anomaly_map.squeeze().cpu().numpy())

    return predict, transform_geometry(model.pre_processor.transform)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float image in [0, 1] resized to ``size`` (height, width) with PIL's bilinear filter."""
    pil = Image.fromarray((image * 255).round().astype(np.uint8))
    return np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32) / 255.0


def heat_map_overlay(image: np.ndarray, full_map: np.ndarray, text: str) -> Image.Image:
    """The original image with the map coloured (jet, 0..1) where the model looked, and a caption."""
    inside = ~np.isnan(full_map)
    heat = apply_colormap(Image.fromarray((np.nan_to_num(full_map).clip(0, 1) * 255).astype(np.uint8))).convert("RGBA")
    heat.putalpha(Image.fromarray(inside.astype(np.uint8) * 255))
    base = Image.fromarray((image * 255).round().astype(np.uint8))
    return add_text_to_image(overlay_image(base, heat, alpha=0.5), text).convert("RGB")


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted, recursively."""
    if not folder.is_dir():
        msg = f"Input folder {str(folder)!r} does not exist."
        raise SystemExit(msg)
    images = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMG_EXTENSIONS)
    if not images:
        msg = f"No images ({', '.join(IMG_EXTENSIONS)}) under {str(folder)!r}."
        raise SystemExit(msg)
    return images


def run(model: Path, input_dir: Path, output: Path, device: str = "CPU", precision: str | None = None) -> Path:
    """Score every image under ``input_dir``; returns the CSV path. Overlays mirror the input folder structure."""
    if model.suffix == ".ckpt":
        predict, geometry = torch_predictor(model, "cpu" if device.upper() == "CPU" else device)
    elif model.suffix in {".xml", ".onnx"}:
        predict, geometry = openvino_predictor(model, device, precision)
    else:
        msg = f"--model {str(model)!r}: expected an OpenVINO .xml, an .onnx or a Lightning .ckpt file."
        raise SystemExit(msg)
    output.mkdir(parents=True, exist_ok=True)
    csv_path = output / "predictions.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "score", "label", "map_max", "overlay"])
        for path in tqdm(find_images(input_dir), desc="Dinomaly", unit="img"):
            image = read_image(path).astype(np.float32)  # (H, W, 3) in [0, 1]
            prediction = predict(image)
            full_map = uncrop_anomaly_map(prediction.anomaly_map, image.shape[:2], geometry)
            label = "anomalous" if prediction.label else "normal"
            overlay_path = output / "overlays" / path.relative_to(input_dir).with_suffix(".png")
            overlay_path.parent.mkdir(parents=True, exist_ok=True)
            heat_map_overlay(image, full_map, f"{label} {prediction.score:.3f}").save(overlay_path)
            writer.writerow(
                [
                    path.relative_to(input_dir).as_posix(),
                    f"{prediction.score:.6f}",
                    label,
                    f"{np.nanmax(full_map):.6f}",
                    overlay_path.relative_to(output).as_posix(),
                ],
            )
    write_folder_report(csv_path, model=model)
    return csv_path


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model.xml / model.onnx (OpenVINO) or *.ckpt (torch)")
    parser.add_argument("--input", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="folder for predictions.csv and overlays/")
    parser.add_argument("--device", default="CPU", help="OpenVINO device (CPU, GPU, AUTO) or torch device")
    parser.add_argument(
        "--precision",
        choices=["f32", "bf16", "f16"],
        help="OpenVINO INFERENCE_PRECISION_HINT; by default the device chooses (bf16 on CPUs that have it)",
    )
    args = parser.parse_args(argv)
    csv_path = run(args.model, args.input, args.output, args.device, args.precision)
    print(f"Wrote {csv_path}, report.html and overlays in {args.output}")


if __name__ == "__main__":
    main()
