"""CPU speed and memory of this plugin's Dinomaly and Dinomaly2 against anomalib's built-in Dinomaly, as paired ratios.

Four comparisons, each "ours vs the closest anomalib built-in" at its own geometry (random weights; the built-in
is built offline by making ``timm.create_model`` ignore ``pretrained=True`` while it is constructed):

- ``vitb``: Dinomaly, DINOv2-reg ViT-B/14 vs the built-in with ``vit_base_patch14_reg4_dinov2``, 448 -> 392 px;
- ``vits``: the same with ViT-S/14;
- ``d2-dinov2``: Dinomaly2 (its defaults), DINOv2-reg ViT-B/14 vs the built-in ViT-B/14 with
  ``use_context_recentering=True`` (its partial Dinomaly2), 448 -> 392 px;
- ``d2-dinov3``: Dinomaly2, DINOv3 ViT-B/16 vs the built-in with ``vit_base_patch16_dinov3`` and
  ``use_context_recentering=True``, 512 -> 448 px (the same 28 x 28 patch grid as ViT-B/14 at 392).

Every ratio is paired: each measurement is repeated over ``--rounds`` rounds (default 3), ours and the built-in
measured in alternation, the order swapped every round (ours, built-in, built-in, ours, ...), so each round gives
one ours / built-in ratio; the table reports ours and the built-in (medians over rounds), the median of the
per-round ratios and their spread (min-max). Single-process ratios moved by 15-25 % between two full runs on
the development machine; only paired ratios carry a claim.

- torch eager FP32, batch 1, through the module's ``forward`` (pre-processing, model, normalisation), and
  training steps at batch 8 through Lightning (forward, loss, backward, clipping, optimiser step): one fresh
  process per model and round (the built-in globally patches timm's position-embedding resampling, so it never
  shares a process with ours); peak memory (``ru_maxrss``) comes from the same processes;
- OpenVINO FP32 with ``INFERENCE_PRECISION_HINT=f32`` (a true FP32 figure), the same IR with the CPU's default
  hint (bf16 on CPUs with AVX-512 BF16) and INT8 post-training quantisation: both models compiled in one process
  (which imports only ``openvino`` and ``numpy``), one block of alternating inferences per round; the IRs are
  exported once per model through ``Engine.export`` at a static input, INT8 calibrated on the MVTec-AD bottle
  training images;
- FLOPs of one forward / training step (``torch.utils.flop_counter``, counted once per model, in the first
  round), turned into achieved GFLOP/s and compared with an fp32 GEMM measured here; OpenVINO FP32's per-op
  profile split into GEMM-like ops and the rest; Pearson correlation of INT8 maps with FP32 maps on the bottle
  test images (random weights, so only an indication; ``tests/test_export.py`` checks a trained small model).

Counts per process in the default run: torch eager 1 warm-up + 4 timed inferences (median); training 1 untimed
warm-up step (the FLOP-counted one in the first round) + 1 timed step; OpenVINO 1 warm-up inference per model,
then per round 4 inferences per model in alternation (per-round ratio from the two medians). A ViT-B comparison
takes an estimated 14.5 minutes on a quiet 2-core CPU (training 6 processes of ~1 min, export ~4 min, torch
eager ~2 min, OpenVINO ~2 min), the ViT-S one about 7 (process start-up dominates): the full run (all four,
3 rounds) about 51 minutes, 44 without ``vits``. The estimate is printed at the start, the total at the end.

Usage:
    python benchmarks/benchmark.py --output results/benchmark             # all four comparisons, 3 rounds
    python benchmarks/benchmark.py --comparisons vitb d2-dinov3 --rounds 5
    python benchmarks/benchmark.py --quick   # smoke run: vits, d2-dinov2, d2-dinov3 at 7 x 7 patches, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MVTEC = REPO.parent / "shared" / "data" / "mvtec_ad"
IMPLS = ("ours", "builtin")
NORMALISATION_IMAGES = 4  # training images whose predictions set the (untrained) models' normalisation


@dataclass(frozen=True)
class Comparison:
    """One row block: our model against the closest built-in, at one geometry."""

    ours_class: str  # "Dinomaly" or "Dinomaly2" from anomalib_dinomaly
    ours_encoder: str
    builtin_encoder: str
    image_size: int  # resize before the crop
    crop_size: int  # model input
    quick_sizes: tuple[int, int]  # (image_size, crop_size) of --quick: a 7 x 7 patch grid
    builtin_kwargs: dict[str, Any] = field(default_factory=dict)
    vit_width: str = "base"  # for the time estimate

    def title(self, image_size: int, crop_size: int) -> str:
        """Names both models and the geometry."""
        builtin = self.builtin_encoder + "".join(f", {key}={value}" for key, value in self.builtin_kwargs.items())
        return (
            f"{self.ours_class} {self.ours_encoder} (ours) vs anomalib Dinomaly {builtin} (built-in), "
            f"{image_size} -> {crop_size} px"
        )


RECENTERING = {"use_context_recentering": True}
COMPARISONS = {
    "vitb": Comparison("Dinomaly", "dinov2reg_vit_base_14", "vit_base_patch14_reg4_dinov2", 448, 392, (112, 98)),
    "vits": Comparison(
        "Dinomaly", "dinov2reg_vit_small_14", "vit_small_patch14_reg4_dinov2", 448, 392, (112, 98), vit_width="small"
    ),
    "d2-dinov2": Comparison(
        "Dinomaly2", "dinov2reg_vit_base_14", "vit_base_patch14_reg4_dinov2", 448, 392, (112, 98), RECENTERING
    ),
    # anomalib 2.7's built-in builds and runs timm's DINOv3 offline (checked), so it is compared at DINOv3's geometry
    "d2-dinov3": Comparison(
        "Dinomaly2", "dinov3_vit_base_16", "vit_base_patch16_dinov3", 512, 448, (128, 112), RECENTERING
    ),
}
DEFAULT_COMPARISONS = ["vitb", "vits", "d2-dinov2", "d2-dinov3"]
QUICK_COMPARISONS = ["vits", "d2-dinov2", "d2-dinov3"]


# ---------------------------------------------------------------------------------------------- helpers
def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Current resident memory of this process, MiB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(function, warmup: int, iterations: int) -> float:  # noqa: ANN001
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bottle_images(mvtec_root: Path, split: str, size: int, limit: int | None = None):  # noqa: ANN201
    """MVTec-AD bottle images resized (antialiased) to size x size: (N, 3, size, size) float32 numpy in [0, 1]."""
    import numpy as np
    from PIL import Image

    paths = sorted((mvtec_root / "bottle" / split).rglob("*.png"))[:limit]
    if not paths:
        msg = f"No bottle images under {mvtec_root / 'bottle' / split}; pass --mvtec-root."
        raise SystemExit(msg)
    images = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths]
    return (np.stack(images).astype(np.float32) / 255.0).transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------- workers
def build_model(impl: str, comparison: str, image_size: int, crop_size: int):  # noqa: ANN201
    """The Lightning module with random weights. The built-in is built with timm's downloads switched off."""
    import torch

    torch.manual_seed(0)
    spec = COMPARISONS[comparison]
    if impl == "ours":
        import anomalib_dinomaly

        model_class = getattr(anomalib_dinomaly, spec.ours_class)
        return model_class(encoder_name=spec.ours_encoder, pretrained=False, image_size=image_size, crop_size=crop_size)
    import timm

    from anomalib.models import Dinomaly  # ANOMALIB_DINOMALY_OVERRIDE=0: anomalib's own class

    if Dinomaly.__module__.startswith("anomalib_dinomaly"):
        msg = "The built-in worker got the plugin: ANOMALIB_DINOMALY_OVERRIDE=0 was not honoured."
        raise RuntimeError(msg)
    create_model = timm.create_model
    timm.create_model = lambda *args, **kwargs: create_model(*args, **{**kwargs, "pretrained": False})
    try:
        pre_processor = Dinomaly.configure_pre_processor(image_size=(image_size, image_size), crop_size=crop_size)
        return Dinomaly(encoder_name=spec.builtin_encoder, pre_processor=pre_processor, **spec.builtin_kwargs)
    finally:
        timm.create_model = create_model


def fit_normalisation(module, images) -> None:  # noqa: ANN001
    """Set the post-processor's min/max/thresholds from a few training images, as validation would (else NaN)."""
    import torch

    module.eval()
    with torch.no_grad():
        output = module.model(module.pre_processor(torch.from_numpy(images)))
    post = module.post_processor
    for name, values in (("image", output.pred_score), ("pixel", output.anomaly_map)):
        getattr(post, f"{name}_min").fill_(float(values.min()))
        getattr(post, f"{name}_max").fill_(float(values.max()))
        getattr(post, f"_{name}_threshold").fill_(float(values.max()))


def worker_torch(args: argparse.Namespace) -> dict[str, Any]:
    """Torch eager FP32 inference, batch 1; with ``--count-flops`` also the FLOPs of one forward (after timing)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    module = build_model(args.impl, args.comparison, args.image_size, args.crop_size).eval()
    encoder = module.model.encoder
    blocks = len(encoder.vit.blocks) if args.impl == "ours" else len(encoder.feature_extractor.blocks)
    image = torch.rand(1, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    result: dict[str, Any] = {"rss_before_mb": current_rss_mb()}
    with torch.inference_mode():
        seconds = timed(lambda: module(image), args.warmup, args.iterations)
        result.update(seconds=seconds, images_per_s=1 / seconds, peak_rss_mb=peak_rss_mb())
        if args.count_flops:
            with FlopCounterMode(display=False) as counter:
                module(image)
            result["gflop"] = counter.get_total_flops() / 1e9
    result["params_m"] = sum(p.numel() for p in module.model.parameters()) / 1e6
    result["trainable_params_m"] = sum(p.numel() for p in module.model.parameters() if p.requires_grad) / 1e6
    result["encoder_blocks_run"] = blocks
    return result


def worker_train(args: argparse.Namespace) -> dict[str, Any]:
    """Training steps at batch 8 through a Lightning Trainer with the module's own optimiser, loss and clipping.

    ``--warmup-steps`` untimed steps (the first one FLOP-counted with ``--count-flops``), then ``--train-steps``
    timed ones, median reported.
    """
    import torch
    from anomalib.data import ImageBatch, ImageItem
    from lightning.pytorch import Callback, Trainer
    from torch.utils.data import DataLoader, Dataset
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    module = build_model(args.impl, args.comparison, args.image_size, args.crop_size)
    size = args.image_size
    warmup_steps = max(1, args.warmup_steps)  # the first step allocates everything: never timed

    class RandomImages(Dataset):
        def __len__(self) -> int:
            return 10_000

        def __getitem__(self, index: int) -> ImageItem:
            image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(index))
            return ImageItem(image=image, gt_label=torch.tensor(0), image_path=f"random_{index}.png")

    class StepTimer(Callback):
        """Times each optimizer step; counts FLOPs on the first (untimed) step when asked."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.flops = 0.0
            self._counter: FlopCounterMode | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx == 0 and args.count_flops:
                self._counter = FlopCounterMode(display=False)
                self._counter.__enter__()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            self.times.append(time.perf_counter() - self._start)
            if self._counter is not None:
                self._counter.__exit__(None, None, None)
                self.flops = self._counter.get_total_flops()
                self._counter = None

    timer = StepTimer()
    trainer_args = {**module.trainer_arguments}
    trainer_args.pop("max_steps", None)
    trainer = Trainer(
        **trainer_args,
        max_steps=warmup_steps + args.train_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    loader = DataLoader(RandomImages(), batch_size=8, collate_fn=ImageBatch.collate, num_workers=0)
    baseline = current_rss_mb()
    trainer.fit(module, train_dataloaders=loader)
    seconds = statistics.median(timer.times[warmup_steps:])
    result = {"seconds": seconds, "images_per_s": 8 / seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": baseline}
    if args.count_flops:
        result["gflop"] = timer.flops / 1e9
    return result


def worker_export(args: argparse.Namespace) -> dict[str, Any]:
    """OpenVINO FP32 and INT8 (post-training quantisation on the bottle images) through ``Engine.export``."""
    import torch
    from anomalib.data import MVTecAD
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine
    from torchvision.transforms.v2 import Resize

    torch.set_num_threads(args.threads)
    module = build_model(args.impl, args.comparison, args.image_size, args.crop_size)
    fit_normalisation(module, bottle_images(args.mvtec_root, "train", args.image_size, NORMALISATION_IMAGES))
    root = Path(args.export_dir)
    engine = Engine(default_root_dir=root / "engine", logger=False)
    size = (args.image_size, args.image_size)
    result: dict[str, Any] = {}
    start = time.perf_counter()
    path = engine.export(module, ExportType.OPENVINO, export_root=root / "fp32", input_size=size)
    result["fp32_xml"], result["fp32_export_s"] = str(path), time.perf_counter() - start
    # Static input: the built-in's calibration feeds dataset images unresized, so they are resized here.
    datamodule = MVTecAD(
        root=args.mvtec_root, category="bottle", augmentations=Resize(size), num_workers=0, eval_batch_size=1
    )
    start = time.perf_counter()
    try:
        path = engine.export(
            module,
            ExportType.OPENVINO,
            export_root=root / "int8",
            input_size=size,
            compression_type=CompressionType.INT8_PTQ,
            datamodule=datamodule,
        )
        result["int8_xml"], result["int8_export_s"] = str(path), time.perf_counter() - start
    except Exception as error:  # noqa: BLE001  # report the built-in's failure instead of stopping the run
        result["int8_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    return result


def openvino_config(threads: int, precision_hint: str | None) -> dict[str, Any]:
    """CPU settings of every OpenVINO timing: latency hint, the benchmark's threads, optional precision hint."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision_hint:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    return config


def random_input(image_size: int):  # noqa: ANN201
    """The fixed timing input: (1, 3, image_size, image_size) float32 numpy in [0, 1)."""
    import numpy as np

    return np.random.default_rng(0).random((1, 3, image_size, image_size), dtype=np.float32)


GEMM_OP_TYPES = {"FullyConnected", "MatMul", "Subgraph"}  # Subgraph: OpenVINO's fused softmax attention


def op_time_by_type(compiled, image) -> dict[str, float]:  # noqa: ANN001
    """Median milliseconds per OpenVINO op type over 5 profiled runs of a ``PERF_COUNT`` compiled model."""
    import numpy as np

    request = compiled.create_infer_request()
    request.infer({0: image})
    runs = []
    for _ in range(5):
        request.infer({0: image})
        totals: dict[str, float] = {}
        for node in request.get_profiling_info():
            totals[node.node_type] = totals.get(node.node_type, 0.0) + node.real_time.total_seconds() * 1e3
        runs.append(totals)
    return {op: float(np.median([run.get(op, 0.0) for run in runs])) for op in runs[0]}


def worker_openvino(args: argparse.Namespace) -> dict[str, Any]:
    """OpenVINO inference of ours (``--xml``) and the built-in (``--xml-builtin``) in alternation in one process.

    Separate processes minutes apart see the machine drift; here each round is one block of ``--iterations``
    inferences per model, alternating one by one and starting with the other model every round, so both see
    the same drift and each round gives one ratio. Imports nothing but openvino and numpy, as a deployment
    would. ``--profile`` adds the per-op split into GEMM-like ops (fully connected layers, matmuls, fused
    attention) and the rest; ``--reference``/``--reference-builtin`` (FP32 IRs) add the maps' Pearson correlation
    with them on the bottle test images.
    """
    import numpy as np
    import openvino as ov

    config = openvino_config(args.threads, args.hint)
    core = ov.Core()
    given = {"ours": args.xml, "builtin": args.xml_builtin}  # one of them may have failed to export
    models = {impl: xml for impl, xml in given.items() if xml}
    compiled, result = {}, {}
    for impl, xml in models.items():
        try:
            compiled[impl] = core.compile_model(xml, "CPU", config)
        except RuntimeError as error:
            result[impl] = {"error": f"compile failed: {str(error).splitlines()[0][:300]}"}
    if result:
        return {impl: result.get(impl, {"error": "the other model failed to compile"}) for impl in models}
    requests = {impl: model.create_infer_request() for impl, model in compiled.items()}
    image = random_input(args.image_size)
    for _ in range(args.warmup):
        for request in requests.values():
            request.infer({0: image})
    rounds: dict[str, list[float]] = {impl: [] for impl in models}
    for round_index in range(args.rounds):
        times: dict[str, list[float]] = {impl: [] for impl in models}
        for step in range(args.iterations):
            order = list(models) if (round_index + step) % 2 == 0 else list(reversed(models))
            for impl in order:
                start = time.perf_counter()
                requests[impl].infer({0: image})
                times[impl].append(time.perf_counter() - start)
        for impl in models:
            rounds[impl].append(float(np.median(times[impl])))
    references = {"ours": args.reference, "builtin": args.reference_builtin}
    for impl in models:
        result[impl] = {
            "rounds": [{"seconds": s, "images_per_s": 1 / s} for s in rounds[impl]],
            "precision_hint": args.hint or str(compiled[impl].get_property("INFERENCE_PRECISION_HINT")),
        }
        if args.profile:
            by_type = op_time_by_type(core.compile_model(models[impl], "CPU", {**config, "PERF_COUNT": True}), image)
            profiled_ms = sum(by_type.values())
            gemm_ms = sum(ms for op, ms in by_type.items() if op in GEMM_OP_TYPES)
            result[impl].update(
                profiled_ms=profiled_ms,
                gemm_ms=gemm_ms,
                other_ms=profiled_ms - gemm_ms,
                top_other=sorted(
                    ((op, ms) for op, ms in by_type.items() if op not in GEMM_OP_TYPES), key=lambda item: -item[1]
                )[:4],
            )
        if references[impl]:
            reference = core.compile_model(references[impl], "CPU", openvino_config(args.threads, "f32"))
            correlations = []
            for test_image in bottle_images(args.mvtec_root, "test", args.image_size):
                maps = [np.asarray(m(test_image[None])["anomaly_map"]).ravel() for m in (compiled[impl], reference)]
                correlations.append(float(np.corrcoef(*maps)[0, 1]))
            result[impl]["map_pearson_min"] = min(correlations)
            result[impl]["map_pearson_mean"] = float(np.mean(correlations))
    return result


def worker_gemm(args: argparse.Namespace) -> dict[str, Any]:
    """fp32 GEMM throughput (torch.mm, n x n) with the benchmark's thread count: the machine's practical peak."""
    import torch

    torch.set_num_threads(args.threads)
    n = 1024 if args.quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = timed(lambda: torch.mm(a, b), 3, 5 if args.quick else 20)
    return {"n": n, "gflop_per_s": 2 * n**3 / seconds / 1e9}


WORKERS = {
    "torch": worker_torch,
    "train": worker_train,
    "export": worker_export,
    "openvino": worker_openvino,
    "gemm": worker_gemm,
}


# ---------------------------------------------------------------------------------------------- driver
def geometry(args: argparse.Namespace, comparison: str) -> tuple[int, int]:
    """(image_size, crop_size) of a comparison: its own, the quick run's, or the command line's override."""
    spec = COMPARISONS[comparison]
    image_size, crop_size = spec.quick_sizes if args.quick else (spec.image_size, spec.crop_size)
    return args.image_size or image_size, args.crop_size or crop_size


def estimate_seconds(args: argparse.Namespace, comparison: str) -> float:
    """Rough duration of one comparison on a quiet 2-core CPU, from ViT-B/14 at 392 px: 1.4 s per torch image,
    23 s per training step at batch 8, 1.15 s per OpenVINO FP32 image, ~2 min per export (INT8 included)."""
    spec = COMPARISONS[comparison]
    image_size, crop_size = geometry(args, comparison)
    patch = 16 if "16" in spec.ours_encoder else 14
    work = (crop_size // patch) ** 2 / 784 * (1.0 if spec.vit_width == "base" else 0.3)
    processes = 2 * args.rounds
    torch_s = processes * (10 + (args.warmup + args.iterations) * 1.4 * work) + 2 * 3 * work
    train_s = processes * (15 + (max(1, args.warmup_steps) + args.train_steps) * 23 * work)
    export_s = 2 * (40 + 90 * work)
    inferences = 2 * (args.warmup + args.rounds * args.iterations)
    openvino_s = 3 * 8 + 1.15 * work * (inferences * (1 + 0.6 + 0.4) + 2 * 6 + 2 * 11 * 1.55)
    return torch_s + train_s + export_s + openvino_s


class Driver:
    """Runs each measurement in a fresh process, ours and the built-in in alternation, and collects the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, Any] = {"settings": {}, "gemm": {}, "comparisons": {}}

    def call(self, kind: str, impl: str = "ours", comparison: str = "vits", **extra: Any) -> dict[str, Any]:  # noqa: ANN401
        """Run one worker process; its result, or ``{"error": ...}`` with the end of its output."""
        args = self.args
        image_size, crop_size = geometry(args, comparison)
        command = [
            sys.executable, __file__, "--worker", kind, "--impl", impl, "--comparison", comparison,
            "--image-size", str(image_size), "--crop-size", str(crop_size), "--threads", str(args.threads),
            "--warmup", str(args.warmup), "--iterations", str(args.iterations), "--rounds", str(args.rounds),
            "--warmup-steps", str(args.warmup_steps), "--train-steps", str(args.train_steps),
            "--mvtec-root", str(args.mvtec_root),
        ]  # fmt: skip
        if args.quick:
            command.append("--quick")
        label = f"  {comparison} {'ours + built-in' if kind == 'openvino' else impl} {extra.pop('label', kind)}"
        for key, value in extra.items():
            if value is True:
                command.append(f"--{key.replace('_', '-')}")
            elif value is not False and value is not None:
                command += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env["ANOMALIB_DINOMALY_OVERRIDE"] = "0" if impl == "builtin" else "1"
        print(f"{label} ...", end="", flush=True)
        start = time.perf_counter()
        process = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
        if process.returncode != 0 or not lines:
            tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-5:])
            print(f" failed after {elapsed:.0f} s")
            return {"error": f"worker exited with {process.returncode}: {tail[-600:]}"}
        print(f" {elapsed:.0f} s")
        return json.loads(lines[-1][len("RESULT ") :])

    def alternating(self, kind: str, comparison: str) -> dict[str, Any]:
        """``--rounds`` rounds of one process per model, the order swapped every round; FLOPs in the first."""
        rounds: dict[str, list[dict[str, Any]]] = {impl: [] for impl in IMPLS}
        for round_index in range(self.args.rounds):
            for impl in IMPLS if round_index % 2 == 0 else tuple(reversed(IMPLS)):
                rounds[impl].append(self.call(kind, impl, comparison, count_flops=round_index == 0))
        return {impl: {"rounds": rounds[impl]} for impl in IMPLS}

    def openvino(
        self, comparison: str, xmls: dict[str, str | None], errors: dict[str, str], **extra: Any  # noqa: ANN401
    ) -> dict[str, Any]:
        """Both models' IRs timed in alternation in one process; a model without an IR gets its export error."""
        available = {impl: xml for impl, xml in xmls.items() if xml}
        result = {}
        if available:
            result = self.call("openvino", "ours", comparison, xml=available.get("ours"),
                               xml_builtin=available.get("builtin"), **extra)  # fmt: skip
        return {
            impl: result.get(impl, {"error": result.get("error") if impl in available else errors.get(impl)})
            for impl in IMPLS
        }

    def run(self) -> dict[str, Any]:
        args = self.args
        self.results["settings"] = {
            key: str(value) for key, value in vars(args).items() if key not in {"worker", "impl", "comparison"}
        }
        self.results["settings"]["cpu_count"] = os.cpu_count()
        estimates = {name: estimate_seconds(args, name) for name in args.comparisons}
        listed = ", ".join(f"{name} {seconds / 60:.0f}" for name, seconds in estimates.items())
        print(f"Estimated duration on a quiet 2-core CPU: {sum(estimates.values()) / 60:.0f} min ({listed} min)")
        print(f"GEMM peak ({args.threads} threads)")
        self.results["gemm"] = self.call("gemm")
        for name in args.comparisons:
            image_size, crop_size = geometry(args, name)
            print(COMPARISONS[name].title(image_size, crop_size))
            started = time.perf_counter()
            block: dict[str, Any] = {"title": COMPARISONS[name].title(image_size, crop_size)}
            block["torch"] = self.alternating("torch", name)
            block["train"] = self.alternating("train", name)
            with tempfile.TemporaryDirectory(prefix=f"dinomaly-{name}-") as folder:
                block["export"] = {
                    impl: self.call("export", impl, name, export_dir=Path(folder) / impl) for impl in IMPLS
                }
                exports = block["export"]
                errors = {impl: e.get("int8_error", e.get("error", "not exported")) for impl, e in exports.items()}
                fp32 = {impl: e.get("fp32_xml") for impl, e in exports.items()}
                int8 = {impl: e.get("int8_xml") for impl, e in exports.items()}
                block["ov_fp32"] = self.openvino(name, fp32, errors, label="OpenVINO FP32", hint="f32", profile=True)
                block["ov_default"] = self.openvino(name, fp32, errors, label="OpenVINO default hint", hint="")
                block["ov_int8"] = self.openvino(
                    name, int8, errors, label="OpenVINO INT8", hint="f32",
                    reference=fp32["ours"] if int8["ours"] else None,
                    reference_builtin=fp32["builtin"] if int8["builtin"] else None,
                )  # fmt: skip
            block["wall_s"] = time.perf_counter() - started
            block["estimate_s"] = estimates[name]
            self.results["comparisons"][name] = block
        return self.results


# ---------------------------------------------------------------------------------------------- report
# (title, section, key); "achieved" is GFLOP (or GOP) per second from the FLOP count and each round's time
PAIRED_ROWS = [
    ("torch eager FP32, images/s", "torch", "images_per_s"),
    ("torch eager FP32, peak RSS MiB", "torch", "peak_rss_mb"),
    ("torch eager FP32, achieved GFLOP/s", "torch", "achieved"),
    ("OpenVINO FP32 (hint f32), images/s", "ov_fp32", "images_per_s"),
    ("OpenVINO FP32 (hint f32), achieved GFLOP/s", "ov_fp32", "achieved"),
    ("OpenVINO FP32 IR (default hint), images/s", "ov_default", "images_per_s"),
    ("OpenVINO INT8 PTQ, images/s", "ov_int8", "images_per_s"),
    ("OpenVINO INT8 PTQ, achieved GOP/s", "ov_int8", "achieved"),
    ("training step batch 8, s", "train", "seconds"),
    ("training step batch 8, peak RSS MiB", "train", "peak_rss_mb"),
    ("training step batch 8, achieved GFLOP/s", "train", "achieved"),
]
SINGLE_ROWS = [  # measured once per model: no spread
    ("OpenVINO FP32 profile: GEMM + attention ops, ms", "ov_fp32", "gemm_ms"),
    ("OpenVINO FP32 profile: all other ops, ms", "ov_fp32", "other_ms"),
    ("OpenVINO INT8 PTQ, map Pearson vs FP32 (min)", "ov_int8", "map_pearson_min"),
    ("GFLOP per image (forward)", "torch", "gflop"),
    ("GFLOP per training step (batch 8)", "train", "gflop"),
    ("parameters, M", "torch", "params_m"),
    ("trainable parameters, M", "torch", "trainable_params_m"),
    ("encoder blocks run", "torch", "encoder_blocks_run"),
]


def single(block: dict[str, Any], section: str, impl: str, key: str) -> float | str | None:
    """A value measured once: from the section's extras or its first round; "failed" on an error."""
    data = block.get(section, {}).get(impl, {})
    if "error" in data:
        return "failed"
    if key in data:
        return data[key]
    rounds = data.get("rounds") or [{}]
    return "failed" if "error" in rounds[0] else rounds[0].get(key)


def per_round(block: dict[str, Any], section: str, impl: str, key: str) -> list[float] | str | None:
    """A measurement's value in every round, "failed" if any round failed, ``None`` if not measured."""
    data = block.get(section, {}).get(impl, {})
    rounds = data.get("rounds")
    if "error" in data or (rounds and any("error" in r for r in rounds)):
        return "failed"
    if not rounds:
        return None
    if key == "achieved":
        # OpenVINO runs the graph whose FLOPs the torch worker counted
        gflop = single(block, "train" if section == "train" else "torch", impl, "gflop")
        if not isinstance(gflop, float | int):
            return None
        return [gflop / r["seconds"] for r in rounds]
    values = [r.get(key) for r in rounds]
    return values if all(isinstance(v, float | int) for v in values) else None


def ratios(mine: Any, other: Any) -> list[float] | None:  # noqa: ANN401
    """Per-round ratios of two equally long lists of numbers, else ``None``."""
    if not (isinstance(mine, list) and isinstance(other, list)) or len(mine) != len(other):
        return None
    return [m / o for m, o in zip(mine, other, strict=True) if o] or None


def median(values: Any) -> Any:  # noqa: ANN401
    """Median of a list of numbers; a marker or ``None`` passes through."""
    return statistics.median(values) if isinstance(values, list) else values


def fmt(cell: float | str | None) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, str):
        return cell
    if isinstance(cell, int):
        return str(cell)
    return f"{cell:.4f}" if abs(cell) < 1 else f"{cell:.3g}" if abs(cell) < 100 else f"{cell:.0f}"


def spread(values: list[float] | None) -> str:
    return f"{fmt(min(values))} - {fmt(max(values))}" if values else "-"


def target_line(title: str, values: list[float] | None, target: float, higher: bool) -> str:
    if not values:
        return f"- {title}: not measured"
    ratio = statistics.median(values)
    met = ratio >= target if higher else ratio <= target
    return f"- {title}: {ratio:.2f} (spread {spread(values)}; {'met' if met else 'NOT met'})"


def report(results: dict[str, Any]) -> str:
    """The results as Markdown tables of paired ours/built-in ratios, and the issue's targets."""
    gemm = results["gemm"].get("gflop_per_s")
    settings = results["settings"]
    rounds = settings["rounds"]
    lines = [
        f"CPU threads: {settings['threads']} (of {settings['cpu_count']}); fp32 GEMM peak "
        f"({results['gemm'].get('n')}^2, torch.mm): {fmt(gemm)} GFLOP/s; batch 1 unless stated; random weights; "
        f"{rounds} paired rounds: ours and the built-in alternate (order swapped every round), ratio = median of "
        "the per-round ours / built-in ratios, spread = their min - max.",
        "",
    ]
    header = (
        f"| measurement | ours | built-in | ours / built-in (median of {rounds} paired rounds) | spread (min - max) |"
    )
    for name, block in results["comparisons"].items():
        lines += [f"### {name}: {block['title']}", "", header, "|---|---|---|---|---|"]
        for title, section, key in PAIRED_ROWS:
            mine, other = (per_round(block, section, impl, key) for impl in IMPLS)
            paired = ratios(mine, other)
            lines.append(
                f"| {title} | {fmt(median(mine))} | {fmt(median(other))} | "
                f"{fmt(median(paired))} | {spread(paired)} |"
            )
        for title, section, key in SINGLE_ROWS:
            mine, other = (single(block, section, impl, key) for impl in IMPLS)
            both = isinstance(mine, float | int) and isinstance(other, float | int) and other
            lines.append(f"| {title} | {fmt(mine)} | {fmt(other)} | {fmt(mine / other if both else None)} | single |")
        if gemm:
            for label, section in (("torch eager", "torch"), ("OpenVINO FP32", "ov_fp32"), ("training", "train")):
                achieved = median(per_round(block, section, "ours", "achieved"))
                if isinstance(achieved, float):
                    lines.append(f"\nours, {label}: {100 * achieved / gemm:.0f} % of the fp32 GEMM peak")
        int8_over_torch = ratios(
            per_round(block, "ov_int8", "ours", "images_per_s"), per_round(block, "torch", "builtin", "images_per_s")
        )
        lines += [
            "",
            "Targets:",
            target_line(
                "OpenVINO INT8 (ours) / torch eager (built-in) >= 2.0 (rounds matched by index; the two ran in "
                "different processes)",
                int8_over_torch,
                2.0,
                True,
            ),
        ]
        for title, section, key, target, higher in (
            ("OpenVINO FP32 ours / built-in >= 1.1 (paired)", "ov_fp32", "images_per_s", 1.1, True),
            ("torch eager ours / built-in >= 1.1 (paired)", "torch", "images_per_s", 1.1, True),
            ("training step ours / built-in <= 1.0 (paired)", "train", "seconds", 1.0, False),
        ):
            mine, other = (per_round(block, section, impl, key) for impl in IMPLS)
            lines.append(target_line(title, ratios(mine, other), target, higher))
        pearson = single(block, "ov_int8", "ours", "map_pearson_min")
        if isinstance(pearson, float):
            lines.append(f"- INT8 map Pearson vs FP32 >= 0.99 (random weights): {pearson:.4f}")
        for impl in IMPLS:
            top_other = block.get("ov_fp32", {}).get(impl, {}).get("top_other")
            if top_other:
                listed = ", ".join(f"{op} {ms:.1f}" for op, ms in top_other)
                lines.append(f"- {impl}, OpenVINO FP32 largest non-GEMM ops (ms): {listed}")
        for failure in failures(block):
            lines.append(f"- {failure}")
        lines.append(f"- wall time of this comparison: {block['wall_s'] / 60:.1f} min")
        lines.append("")
    lines += dinomaly2_cost(results["comparisons"])
    return "\n".join(lines)


def failures(block: dict[str, Any]) -> list[str]:
    """One line per failed measurement, with the end of its error."""
    found = []
    for section, data in block.items():
        if not isinstance(data, dict):
            continue
        for impl in IMPLS:
            entry = data.get(impl, {})
            errors = [entry["error"]] if "error" in entry else []
            errors += [r["error"] for r in entry.get("rounds", []) if "error" in r]
            if section == "export" and "int8_error" in entry:
                errors.append(entry["int8_error"])
            found += [f"{impl} {section} failed: {str(error).splitlines()[-1][:200]}" for error in errors[:1]]
    return found


def dinomaly2_cost(comparisons: dict[str, Any]) -> list[str]:
    """Dinomaly2 against our Dinomaly at the same encoder and geometry; NOT paired (different comparisons)."""
    if "d2-dinov2" not in comparisons or "vitb" not in comparisons:
        return []
    lines = [
        "Dinomaly2 cost relative to our Dinomaly (d2-dinov2 ours / vitb ours, same DINOv2-reg ViT-B/14 and geometry; "
        "NOT paired: medians of two comparisons run minutes apart, so machine drift is not cancelled):",
    ]
    for label, section in (("torch eager images/s", "torch"), ("training images/s", "train")):
        two, one = (
            median(per_round(comparisons[name], section, "ours", "images_per_s")) for name in ("d2-dinov2", "vitb")
        )
        value = f"{two / one:.2f}" if isinstance(two, float) and isinstance(one, float) else "not measured"
        lines.append(f"- {label}: {value}")
    return [*lines, ""]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: vits, d2-dinov2, d2-dinov3 at a 7 x 7 patch grid, 2 rounds"
    )
    parser.add_argument(
        "--comparisons",
        nargs="+",
        choices=sorted(COMPARISONS),
        help="default: all four (quick: vits d2-dinov2 d2-dinov3)",
    )
    parser.add_argument("--rounds", type=int, help="paired rounds per measurement (default 3; quick 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch and OpenVINO")
    parser.add_argument("--mvtec-root", type=Path, default=DEFAULT_MVTEC, help="MVTec-AD root (bottle is used)")
    parser.add_argument("--output", type=Path, help="folder for results.json and results.md")
    parser.add_argument("--image-size", type=int, help="resize before the crop, for all comparisons (default: own)")
    parser.add_argument("--crop-size", type=int, help="model input, for every comparison (default: each own)")
    parser.add_argument("--warmup", type=int, help="untimed inferences per process / model (default 1)")
    parser.add_argument(
        "--iterations",
        type=int,
        help="timed inferences per process (torch) or per round and model (OpenVINO) (default 4; quick 2)",
    )
    parser.add_argument("--warmup-steps", type=int, help="untimed training steps per process, at least 1 (default 1)")
    parser.add_argument("--train-steps", type=int, help="timed training steps per process (default 1)")
    # worker-only arguments
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--comparison", choices=sorted(COMPARISONS), default="vits", help=argparse.SUPPRESS)
    parser.add_argument("--export-dir", help=argparse.SUPPRESS)
    parser.add_argument("--xml", help=argparse.SUPPRESS)
    parser.add_argument("--xml-builtin", help=argparse.SUPPRESS)
    parser.add_argument("--hint", help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    parser.add_argument("--reference-builtin", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = {
        "comparisons": QUICK_COMPARISONS if args.quick else DEFAULT_COMPARISONS,
        "rounds": 2 if args.quick else 3,
        "warmup": 1,
        "iterations": 2 if args.quick else 4,
        "warmup_steps": 1,
        "train_steps": 1,
    }
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        result = WORKERS[args.worker](args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    start = time.perf_counter()
    results = Driver(args).run()
    results["wall_s"] = time.perf_counter() - start
    text = report(results)
    print("\n" + text + f"\nTotal benchmark time: {results['wall_s'] / 60:.1f} min")
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.json").write_text(json.dumps(results, indent=2))
        (args.output / "results.md").write_text(text)
        print(f"Saved {args.output / 'results.json'} and {args.output / 'results.md'}")


if __name__ == "__main__":
    main()
