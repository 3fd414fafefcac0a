"""Score a folder of images with a trained Dinomaly: CSV of scores and labels, heat maps on the original images.

The model is either an exported OpenVINO IR (``model.xml``) or ONNX file, run by anomalib's
``OpenVINOInferencer``, or a Lightning checkpoint (``*.ckpt``), run as the torch model. The model sees a
resized, center-cropped image; its map is placed back on the region of the original image it covers,
using the resize / crop sizes stored in the exported file (or the checkpoint's pre-processor). The rest of
the image, which the model never saw, stays uncoloured.

Images follow the training rules (:mod:`anomalib_dinomaly.data_check`): a file that cannot be read, is
truncated, or is 16/32-bit greyscale (which anomalib's reader would turn almost white) is refused, with its
name and the reason, and skipped; the others are scored. ``predictions.csv`` lists every image with a
``status`` (``ok`` or ``failed``) and the ``reason``; it and the overlays are written atomically, so an
interrupted run or a rerun never leaves a half-written file. The run ends with a summary and exits with
status 1 if any image failed.

Examples:
    python examples/infer_folder.py --model results/export/weights/openvino/model.xml \\
        --input ../shared/data/mvtec_ad/bottle/test --output results/infer
    python examples/infer_folder.py --model results/DinomalyPlugin/MVTecAD/bottle/latest/weights/lightning/model.ckpt \\
        --input ../shared/data/mvtec_ad/bottle/test --output results/infer-torch
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
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

from anomalib_dinomaly.atomic_files import atomic_write_bytes
from anomalib_dinomaly.data_check import image_file_problem
from anomalib_dinomaly.deploy import Geometry, read_geometry, transform_geometry, uncrop_anomaly_map
from anomalib_dinomaly.image_input import to_rgb_float
from anomalib_dinomaly.report import write_folder_report

CSV_COLUMNS = ("image", "status", "score", "label", "map_max", "overlay", "reason")


class Prediction(NamedTuple):
    """One image's result: normalised score and map (0.5 = threshold) and the label."""

    score: float
    label: bool
    anomaly_map: np.ndarray  # (h, w) on the model input


Predictor = Callable[[np.ndarray], Prediction]  # image array (see to_rgb_float: grey, RGB, RGBA) -> Prediction


class ImageResult(NamedTuple):
    """One image of the folder: ``status`` ``ok`` with its score, label, map maximum and overlay (relative to
    the output folder), or ``failed`` with the ``reason`` and no score."""

    image: str  # relative to the input folder, "/"-separated
    status: str
    score: float | None = None
    label: str | None = None
    map_max: float | None = None
    overlay: str | None = None
    reason: str = ""


def openvino_predictor(path: Path, device: str, precision: str | None) -> tuple[Predictor, Geometry]:
    """anomalib's ``OpenVINOInferencer`` on an ``.xml`` / ``.onnx`` file; a static-size model gets resized input."""
    from anomalib.deploy import OpenVINOInferencer

    config = {"INFERENCE_PRECISION_HINT": precision} if precision else None
    inferencer = OpenVINOInferencer(path, device=device, config=config)
    shape = inferencer.input_blob.partial_shape
    static = (shape[2].get_length(), shape[3].get_length()) if shape[2].is_static and shape[3].is_static else None

    def predict(image: np.ndarray) -> Prediction:
        image = to_rgb_float(image)  # OpenVINOInferencer itself does not convert greyscale or RGBA arrays
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
        batch = torch.from_numpy(to_rgb_float(image)).permute(2, 0, 1)[None].to(device)
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


def read_model_image(path: Path) -> np.ndarray:
    """(H, W, 3) float image in [0, 1], read as training reads it; refused under the training rules.

    Raises:
        ValueError: the file is unreadable, truncated, or 16/32-bit greyscale (the message names it).
    """
    problem, _ = image_file_problem(path)
    if problem:
        raise ValueError(problem)
    return read_image(path).astype(np.float32)


def load_predictor(model: Path, device: str = "CPU", precision: str | None = None) -> tuple[Predictor, Geometry]:
    """The predictor for an OpenVINO ``.xml`` / ``.onnx`` file or a Lightning ``.ckpt``, and its geometry."""
    if model.suffix == ".ckpt":
        return torch_predictor(model, "cpu" if device.upper() == "CPU" else device)
    if model.suffix in {".xml", ".onnx"}:
        return openvino_predictor(model, device, precision)
    msg = f"--model {str(model)!r}: expected an OpenVINO .xml, an .onnx or a Lightning .ckpt file."
    raise SystemExit(msg)


def score_image(path: Path, input_dir: Path, output: Path, predict: Predictor, geometry: Geometry) -> ImageResult:
    """Score one image and write its overlay; a file that fails is reported in the result, never raised."""
    name = path.relative_to(input_dir).as_posix()
    try:
        image = read_model_image(path)
        prediction = predict(image)
        full_map = uncrop_anomaly_map(prediction.anomaly_map, image.shape[:2], geometry)
        label = "anomalous" if prediction.label else "normal"
        overlay_path = output / "overlays" / path.relative_to(input_dir).with_suffix(".png")
        buffer = io.BytesIO()
        heat_map_overlay(image, full_map, f"{label} {prediction.score:.3f}").save(buffer, format="PNG")
        atomic_write_bytes(buffer.getbuffer(), overlay_path)
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the folder; the reason is reported
        named = str(path) in str(error)
        return ImageResult(name, "failed", reason=str(error) if named else f"{path}: {type(error).__name__}: {error}")
    return ImageResult(
        name, "ok", prediction.score, label, float(np.nanmax(full_map)), overlay_path.relative_to(output).as_posix()
    )


def score_folder(
    model: Path,
    input_dir: Path,
    output: Path,
    device: str = "CPU",
    precision: str | None = None,
) -> list[ImageResult]:
    """Score every image under ``input_dir`` (overlays under ``output/overlays``, mirroring the input folders).

    Failures are printed as they happen (file and reason) and returned with the others.
    """
    predict, geometry = load_predictor(model, device, precision)
    results = []
    for path in tqdm(find_images(input_dir), desc="Dinomaly", unit="img"):
        result = score_image(path, input_dir, output, predict, geometry)
        if result.status != "ok":
            tqdm.write(f"skipped {result.reason}", file=sys.stderr)
        results.append(result)
    return results


def write_csv(results: Sequence[ImageResult], path: Path) -> None:
    """All results as CSV (:data:`CSV_COLUMNS`), written atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for result in results:
        writer.writerow(
            [
                result.image,
                result.status,
                "" if result.score is None else f"{result.score:.6f}",
                result.label or "",
                "" if result.map_max is None else f"{result.map_max:.6f}",
                result.overlay or "",
                result.reason,
            ],
        )
    atomic_write_bytes(text.getvalue().encode(), path)


def summary(results: Sequence[ImageResult]) -> str:
    """One line per failed image after a count line."""
    failed = [result for result in results if result.status != "ok"]
    anomalous = sum(result.label == "anomalous" for result in results)
    lines = [f"{len(results) - len(failed)} of {len(results)} images scored ({anomalous} anomalous), {len(failed)} failed."]
    lines += [f"  failed: {result.reason}" for result in failed]
    return "\n".join(lines)


def write_outputs(results: Sequence[ImageResult], output: Path, model: Path) -> Path:
    """``output/predictions.csv`` (every image) and ``output/report.html`` (the scored ones, if any); returns the
    CSV path."""
    csv_path = output / "predictions.csv"
    write_csv(results, csv_path)
    if any(result.status == "ok" for result in results):
        write_folder_report(csv_path, model=model)
    return csv_path


def run(model: Path, input_dir: Path, output: Path, device: str = "CPU", precision: str | None = None) -> Path:
    """Score every image under ``input_dir`` and write ``output/predictions.csv``; returns the CSV path."""
    return write_outputs(score_folder(model, input_dir, output, device, precision), output, model)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 if any image failed)."""
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
    results = score_folder(args.model, args.input, args.output, args.device, args.precision)
    csv_path = write_outputs(results, args.output, args.model)
    print(summary(results))
    print(f"Wrote {csv_path}, report.html and overlays in {args.output}")
    return 1 if any(result.status != "ok" for result in results) else 0

if __name__ == "__main__":
    sys.exit(main())
