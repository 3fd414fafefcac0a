"""CPU speed and memory of this Dinomaly against anomalib's built-in one, in one run, printed as ratios ours/theirs.

Both models have random weights and the same architecture (DINOv2 ViT with 4 registers, 8 linear-attention
decoder blocks, 448 -> 392 px); the built-in is built offline by making ``timm.create_model`` ignore
``pretrained=True`` while it is constructed. Every measurement runs in its own process, so that:

- the built-in's global patch of timm's position-embedding resampling never touches our model,
- peak memory (``ru_maxrss``) belongs to that one measurement; OpenVINO runs import only ``openvino``
  and ``numpy``, as a deployment would.

Measured per architecture and implementation:

- torch eager FP32, batch 1, through the module's ``forward`` (pre-processing, model, normalisation);
- OpenVINO FP32 with ``INFERENCE_PRECISION_HINT=f32`` (a true FP32 figure), the same IR with the device's
  default hint (bf16 on CPUs with AVX-512 BF16), and INT8 post-training quantisation, all exported through
  ``Engine.export`` at a static 448 x 448 input and calibrated on the MVTec-AD bottle training images;
- a training step at batch 8 (forward, loss, backward, clipping, optimiser step, through Lightning);
- FLOPs of one forward / training step (``torch.utils.flop_counter``), turned into achieved GFLOP/s and
  compared with an fp32 GEMM measured here;
- OpenVINO FP32 of both models once more, alternating in one process so that machine drift hits both alike,
  with the time split into GEMM-like ops and the rest (OpenVINO's per-op profile);
- Pearson correlation of INT8 maps with FP32 maps on the bottle test images (random weights, so only an
  indication; ``tests/test_export.py`` checks it on a trained small model).

Usage (an estimated 15-20 minutes for both architectures on a quiet 2-core CPU; the quick run takes ~2.5):
    python benchmarks/benchmark.py --output results/benchmark
    python benchmarks/benchmark.py --quick          # smoke run: ViT-S at 112 -> 98 px, 1-2 iterations
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MVTEC = REPO.parent / "shared" / "data" / "mvtec_ad"
ARCHITECTURES = {
    # name: (our encoder_name, the built-in's encoder_name)
    "vitb": ("dinov2reg_vit_base_14", "vit_base_patch14_reg4_dinov2"),
    "vits": ("dinov2reg_vit_small_14", "vit_small_patch14_reg4_dinov2"),
}
NORMALISATION_IMAGES = 4  # training images whose predictions set the (untrained) models' normalisation


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
def build_model(impl: str, arch: str, image_size: int, crop_size: int):  # noqa: ANN201
    """The Lightning module with random weights. The built-in is built with timm's downloads switched off."""
    import torch

    torch.manual_seed(0)
    ours_name, builtin_name = ARCHITECTURES[arch]
    if impl == "ours":
        from anomalib_dinomaly import Dinomaly

        return Dinomaly(encoder_name=ours_name, pretrained=False, image_size=image_size, crop_size=crop_size)
    import timm

    from anomalib.models import Dinomaly  # ANOMALIB_DINOMALY_OVERRIDE=0: anomalib's own class

    if Dinomaly.__module__.startswith("anomalib_dinomaly"):
        msg = "The built-in worker got the plugin: ANOMALIB_DINOMALY_OVERRIDE=0 was not honoured."
        raise RuntimeError(msg)
    create_model = timm.create_model
    timm.create_model = lambda *args, **kwargs: create_model(*args, **{**kwargs, "pretrained": False})
    try:
        pre_processor = Dinomaly.configure_pre_processor(image_size=(image_size, image_size), crop_size=crop_size)
        return Dinomaly(encoder_name=builtin_name, pre_processor=pre_processor)
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
    """Torch eager FP32 inference, batch 1."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    module = build_model(args.impl, args.arch, args.image_size, args.crop_size).eval()
    encoder = module.model.encoder
    blocks = len(encoder.vit.blocks) if args.impl == "ours" else len(encoder.feature_extractor.blocks)
    image = torch.rand(1, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    baseline = current_rss_mb()
    with torch.inference_mode():
        seconds = timed(lambda: module(image), args.warmup, args.iterations)
        with FlopCounterMode(display=False) as counter:
            module(image)
    return {
        "seconds": seconds,
        "images_per_s": 1 / seconds,
        "gflop": counter.get_total_flops() / 1e9,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": baseline,
        "params_m": sum(p.numel() for p in module.model.parameters()) / 1e6,
        "trainable_params_m": sum(p.numel() for p in module.model.parameters() if p.requires_grad) / 1e6,
        "encoder_blocks_run": blocks,
    }


def worker_train(args: argparse.Namespace) -> dict[str, Any]:
    """Training steps at batch 8 through a Lightning Trainer with the module's own optimiser, loss and clipping."""
    import torch
    from anomalib.data import ImageBatch, ImageItem
    from lightning.pytorch import Callback, Trainer
    from torch.utils.data import DataLoader, Dataset
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    module = build_model(args.impl, args.arch, args.image_size, args.crop_size)
    size = args.image_size

    class RandomImages(Dataset):
        def __len__(self) -> int:
            return 10_000

        def __getitem__(self, index: int) -> ImageItem:
            image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(index))
            return ImageItem(image=image, gt_label=torch.tensor(0), image_path=f"random_{index}.png")

    class StepTimer(Callback):
        """Times each optimizer step; counts FLOPs on the first (warm-up) step."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.flops = 0.0
            self._counter: FlopCounterMode | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx == 0:
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
        max_steps=1 + args.warmup_steps + args.train_steps,
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
    timed_steps = sorted(timer.times[1 + args.warmup_steps :])
    seconds = timed_steps[len(timed_steps) // 2]
    return {
        "seconds": seconds,
        "images_per_s": 8 / seconds,
        "gflop": timer.flops / 1e9,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": baseline,
    }


def worker_export(args: argparse.Namespace) -> dict[str, Any]:
    """OpenVINO FP32 and INT8 (post-training quantisation on the bottle images) through ``Engine.export``."""
    import torch
    from anomalib.data import MVTecAD
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine
    from torchvision.transforms.v2 import Resize

    torch.set_num_threads(args.threads)
    module = build_model(args.impl, args.arch, args.image_size, args.crop_size)
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


def worker_openvino(args: argparse.Namespace) -> dict[str, Any]:
    """OpenVINO inference, batch 1, latency hint; imports nothing but openvino and numpy."""
    import numpy as np
    import openvino as ov

    config = openvino_config(args.threads, args.hint)
    core = ov.Core()
    baseline = current_rss_mb()
    try:
        compiled = core.compile_model(args.xml, "CPU", config)
    except RuntimeError as error:
        return {"error": f"compile failed: {str(error).splitlines()[0][:300]}", "peak_rss_mb": peak_rss_mb()}
    request = compiled.create_infer_request()
    image = random_input(args.image_size)
    seconds = timed(lambda: request.infer({0: image}), args.warmup, args.iterations)
    result = {
        "seconds": seconds,
        "images_per_s": 1 / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": baseline,
        "precision_hint": args.hint or str(compiled.get_property("INFERENCE_PRECISION_HINT")),
    }
    if args.reference:
        reference = core.compile_model(args.reference, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        correlations = []
        for test_image in bottle_images(args.mvtec_root, "test", args.image_size):
            maps = [np.asarray(m(test_image[None])["anomaly_map"]).ravel() for m in (compiled, reference)]
            correlations.append(float(np.corrcoef(*maps)[0, 1]))
        result["map_pearson_min"] = min(correlations)
        result["map_pearson_mean"] = float(np.mean(correlations))
    return result


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


def worker_paired(args: argparse.Namespace) -> dict[str, Any]:
    """OpenVINO FP32 of ours (``--xml``) and the built-in (``--xml-builtin``) timed in alternation in one process.

    Separate processes, minutes apart, see the machine drift by about 10 %; alternating single inferences
    (the order swapped every round) exposes both models to the same drift, so their ratio is the fair one.
    A profiled run then splits each model's time into GEMM-like ops (fully connected layers, matmuls, fused
    attention) and everything else.
    """
    import numpy as np
    import openvino as ov

    config = openvino_config(args.threads, "f32")
    core = ov.Core()
    models = {"ours": args.xml, "builtin": args.xml_builtin}
    requests = {impl: core.compile_model(xml, "CPU", config).create_infer_request() for impl, xml in models.items()}
    image = random_input(args.image_size)
    for _ in range(args.warmup):
        for request in requests.values():
            request.infer({0: image})
    times: dict[str, list[float]] = {impl: [] for impl in requests}
    for round_index in range(2 * args.iterations):
        order = list(requests) if round_index % 2 == 0 else list(reversed(requests))
        for impl in order:
            start = time.perf_counter()
            requests[impl].infer({0: image})
            times[impl].append(time.perf_counter() - start)
    result: dict[str, Any] = {}
    for impl, xml in models.items():
        seconds = float(np.median(times[impl]))
        by_type = op_time_by_type(core.compile_model(xml, "CPU", {**config, "PERF_COUNT": True}), image)
        profiled_ms = sum(by_type.values())
        gemm_ms = sum(ms for op, ms in by_type.items() if op in GEMM_OP_TYPES)
        result[impl] = {
            "seconds": seconds,
            "images_per_s": 1 / seconds,
            "profiled_ms": profiled_ms,
            "gemm_ms": gemm_ms,
            "other_ms": profiled_ms - gemm_ms,
            "top_other": sorted(
                ((op, ms) for op, ms in by_type.items() if op not in GEMM_OP_TYPES), key=lambda item: -item[1]
            )[:4],
        }
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
    "paired": worker_paired,
    "gemm": worker_gemm,
}


# ---------------------------------------------------------------------------------------------- driver
class Driver:
    """Runs each measurement in a fresh process and collects the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, Any] = {"settings": {}, "gemm": {}, "runs": {}}

    def call(self, kind: str, impl: str = "ours", arch: str = "vits", **extra: Any) -> dict[str, Any]:  # noqa: ANN401
        args = self.args
        command = [
            sys.executable, __file__, "--worker", kind, "--impl", impl, "--arch", arch,
            "--image-size", str(args.image_size), "--crop-size", str(args.crop_size), "--threads", str(args.threads),
            "--warmup", str(args.warmup), "--iterations", str(args.iterations),
            "--warmup-steps", str(args.warmup_steps), "--train-steps", str(args.train_steps),
            "--mvtec-root", str(args.mvtec_root),
        ]  # fmt: skip
        if args.quick:
            command.append("--quick")
        for key, value in extra.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env["ANOMALIB_DINOMALY_OVERRIDE"] = "0" if impl == "builtin" else "1"
        label = f"{arch}/{impl}/{kind}" + (f" ({extra['hint'] or 'default hint'})" if "hint" in extra else "")
        print(f"  {label} ...", end="", flush=True)
        start = time.perf_counter()
        process = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
        if process.returncode != 0 or not lines:
            tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-5:])
            print(f" failed after {elapsed:.0f} s")
            return {"error": f"worker exited with {process.returncode}: {tail[-600:]}"}
        result = json.loads(lines[-1][len("RESULT ") :])
        print(f" {elapsed:.0f} s")
        return result

    def run(self) -> dict[str, Any]:
        args = self.args
        self.results["settings"] = {
            key: str(value) for key, value in vars(args).items() if key not in {"worker", "impl", "arch"}
        }
        self.results["settings"]["cpu_count"] = os.cpu_count()
        print(f"GEMM peak ({args.threads} threads)")
        self.results["gemm"] = self.call("gemm")
        for arch in args.archs:
            with tempfile.TemporaryDirectory(prefix=f"dinomaly-{arch}-") as folder:
                fp32_models = {}
                for impl in ("ours", "builtin"):
                    print(f"{arch} {impl}")
                    run: dict[str, Any] = {}
                    run["torch"] = self.call("torch", impl, arch)
                    run["train"] = self.call("train", impl, arch)
                    exported = self.call("export", impl, arch, export_dir=Path(folder) / impl)
                    run["export"] = exported
                    if "fp32_xml" in exported:
                        fp32_models[impl] = exported["fp32_xml"]
                        run["ov_fp32"] = self.call("openvino", impl, arch, xml=exported["fp32_xml"], hint="f32")
                        run["ov_default"] = self.call("openvino", impl, arch, xml=exported["fp32_xml"], hint="")
                    if "int8_xml" in exported:
                        run["ov_int8"] = self.call(
                            "openvino", impl, arch, xml=exported["int8_xml"], hint="f32", reference=exported["fp32_xml"]
                        )
                    else:
                        run["ov_int8"] = {"error": exported.get("int8_error", exported.get("error", "not exported"))}
                    self.results["runs"][f"{arch}/{impl}"] = run
                if len(fp32_models) == 2:
                    print(f"{arch} paired")
                    paired = self.call("paired", "ours", arch, xml=fp32_models["ours"], xml_builtin=fp32_models["builtin"])
                    for impl in ("ours", "builtin"):
                        self.results["runs"][f"{arch}/{impl}"]["ov_fp32_paired"] = paired.get(impl, paired)
        return self.results


ROWS = [
    ("torch eager FP32, images/s", "torch", "images_per_s"),
    ("torch eager FP32, peak RSS MiB", "torch", "peak_rss_mb"),
    ("torch eager FP32, achieved GFLOP/s", "torch", "achieved"),
    ("OpenVINO FP32 (hint f32), images/s", "ov_fp32", "images_per_s"),
    ("OpenVINO FP32 (hint f32), peak RSS MiB", "ov_fp32", "peak_rss_mb"),
    ("OpenVINO FP32 (hint f32), achieved GFLOP/s", "ov_fp32", "achieved"),
    ("OpenVINO FP32, paired in one process, images/s", "ov_fp32_paired", "images_per_s"),
    ("OpenVINO FP32, paired: GEMM + attention ops, ms", "ov_fp32_paired", "gemm_ms"),
    ("OpenVINO FP32, paired: all other ops, ms", "ov_fp32_paired", "other_ms"),
    ("OpenVINO FP32 IR (default hint), images/s", "ov_default", "images_per_s"),
    ("OpenVINO INT8 PTQ, images/s", "ov_int8", "images_per_s"),
    ("OpenVINO INT8 PTQ, peak RSS MiB", "ov_int8", "peak_rss_mb"),
    ("OpenVINO INT8 PTQ, achieved GOP/s", "ov_int8", "achieved"),
    ("OpenVINO INT8 PTQ, map Pearson vs FP32 (min)", "ov_int8", "map_pearson_min"),
    ("training step batch 8, s", "train", "seconds"),
    ("training step batch 8, peak RSS MiB", "train", "peak_rss_mb"),
    ("training step batch 8, achieved GFLOP/s", "train", "achieved"),
    ("GFLOP per image (forward)", "torch", "gflop"),
    ("encoder blocks run", "torch", "encoder_blocks_run"),
]


def value(run: dict[str, Any], section: str, key: str) -> float | str | None:
    """A table cell: a measured number, an error marker, or ``None``."""
    data = run.get(section, {})
    if "error" in data:
        return "failed"
    if key == "achieved":
        # OpenVINO runs the graph whose FLOPs the torch worker counted
        flops = data.get("gflop", run.get("torch", {}).get("gflop"))
        seconds = data.get("seconds")
        return flops / seconds if flops and seconds else None
    return data.get(key)


def fmt(cell: float | str | None) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, str):
        return cell
    if isinstance(cell, int):
        return str(cell)
    return f"{cell:.4f}" if abs(cell) < 1 else f"{cell:.3g}" if abs(cell) < 100 else f"{cell:.0f}"


def report(results: dict[str, Any]) -> str:
    """The results as Markdown tables with ours/theirs ratios, and the issue's targets."""
    gemm = results["gemm"].get("gflop_per_s")
    settings = results["settings"]
    lines = [
        f"CPU threads: {settings['threads']} (of {settings['cpu_count']}); fp32 GEMM peak "
        f"({results['gemm'].get('n')}^2, torch.mm): {fmt(gemm)} GFLOP/s; input {settings['image_size']} px, "
        f"center crop {settings['crop_size']} px; batch 1 unless stated; random weights.",
        "",
    ]
    for arch in dict.fromkeys(key.split("/")[0] for key in results["runs"]):
        ours, theirs = results["runs"][f"{arch}/ours"], results["runs"][f"{arch}/builtin"]
        lines += [f"### {arch}: {ARCHITECTURES[arch][0]} (ours) vs {ARCHITECTURES[arch][1]} (anomalib built-in)", ""]
        lines += ["| measurement | ours | built-in | ours / built-in |", "|---|---|---|---|"]
        for title, section, key in ROWS:
            mine, other = value(ours, section, key), value(theirs, section, key)
            ratio = mine / other if isinstance(mine, float | int) and isinstance(other, float | int) and other else None
            lines.append(f"| {title} | {fmt(mine)} | {fmt(other)} | {fmt(ratio)} |")
        if gemm:
            for label, section in (("torch eager", "torch"), ("OpenVINO FP32", "ov_fp32"), ("training", "train")):
                achieved = value(ours, section, "achieved")
                if isinstance(achieved, float):
                    lines.append(f"\nours, {label}: {100 * achieved / gemm:.0f} % of the fp32 GEMM peak")
        lines += ["", "Targets:"]
        checks = [
            ("OpenVINO INT8 (ours) / torch eager (built-in) >= 2.0", value(ours, "ov_int8", "images_per_s"),
             value(theirs, "torch", "images_per_s"), 2.0, True),
            ("OpenVINO FP32 ours / built-in >= 1.1", value(ours, "ov_fp32", "images_per_s"),
             value(theirs, "ov_fp32", "images_per_s"), 1.1, True),
            ("OpenVINO FP32 ours / built-in >= 1.1 (paired)", value(ours, "ov_fp32_paired", "images_per_s"),
             value(theirs, "ov_fp32_paired", "images_per_s"), 1.1, True),
            ("torch eager ours / built-in >= 1.1", value(ours, "torch", "images_per_s"),
             value(theirs, "torch", "images_per_s"), 1.1, True),
            ("training step ours / built-in <= 1.0", value(ours, "train", "seconds"),
             value(theirs, "train", "seconds"), 1.0, False),
        ]  # fmt: skip
        for title, mine, other, target, higher in checks:
            if isinstance(mine, float) and isinstance(other, float):
                ratio = mine / other
                met = ratio >= target if higher else ratio <= target
                lines.append(f"- {title}: {ratio:.2f} ({'met' if met else 'NOT met'})")
            else:
                lines.append(f"- {title}: not measured ({mine}, {other})")
        pearson = value(ours, "ov_int8", "map_pearson_min")
        if isinstance(pearson, float):
            lines.append(f"- INT8 map Pearson vs FP32 >= 0.99 (random weights): {pearson:.4f}")
        for impl, run in (("ours", ours), ("built-in", theirs)):
            top_other = run.get("ov_fp32_paired", {}).get("top_other")
            if top_other:
                listed = ", ".join(f"{op} {ms:.1f}" for op, ms in top_other)
                lines.append(f"- {impl}, OpenVINO FP32 largest non-GEMM ops (ms): {listed}")
        for impl, run in (("ours", ours), ("built-in", theirs)):
            for section, data in run.items():
                if isinstance(data, dict) and "error" in data:
                    lines.append(f"- {impl} {section} failed: {data['error'].splitlines()[-1][:200]}")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: ViT-S only at 112 -> 98 px, 1-2 iterations")
    parser.add_argument("--archs", nargs="+", choices=sorted(ARCHITECTURES), help="default: vitb vits (quick: vits)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch and OpenVINO")
    parser.add_argument("--mvtec-root", type=Path, default=DEFAULT_MVTEC, help="MVTec-AD root (bottle is used)")
    parser.add_argument("--output", type=Path, help="folder for results.json and results.md")
    parser.add_argument("--image-size", type=int, help="resize before the crop (default 448; quick 112)")
    parser.add_argument("--crop-size", type=int, help="model input (default 392; quick 98)")
    parser.add_argument("--warmup", type=int, help="untimed inference runs (default 2; quick 1)")
    parser.add_argument("--iterations", type=int, help="timed inference runs, median reported (default 10; quick 2)")
    parser.add_argument(
        "--warmup-steps", type=int, help="untimed training steps after the FLOP-counted one (default 1; quick 0)"
    )
    parser.add_argument("--train-steps", type=int, help="timed training steps (default 3; quick 1)")
    # worker-only arguments
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "builtin"], default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="vits", help=argparse.SUPPRESS)
    parser.add_argument("--export-dir", help=argparse.SUPPRESS)
    parser.add_argument("--xml", help=argparse.SUPPRESS)
    parser.add_argument("--hint", help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    parser.add_argument("--xml-builtin", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = {
        "archs": ["vits"] if args.quick else ["vitb", "vits"],
        "image_size": 112 if args.quick else 448,
        "crop_size": 98 if args.quick else 392,
        "warmup": 1 if args.quick else 2,
        "iterations": 2 if args.quick else 10,
        "warmup_steps": 0 if args.quick else 1,
        "train_steps": 1 if args.quick else 3,
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
