"""Run one of the paper's benchmarks and print our per-category table beside the paper's numbers.

    python examples/paper_benchmark.py --dataset MVTecAD --root ./datasets/MVTecAD
    python examples/paper_benchmark.py --dataset Visa --root ./datasets/visa --setting separated
    python examples/paper_benchmark.py --dataset RealIAD --root ./datasets/Real-IAD \
        --encoder-weights ./weights/dinov2_vitb14_reg4_pretrain.pth

It uses the settings in ``configs/dinomaly_<dataset>_<setting>.yaml`` and needs a CUDA GPU, the DINOv2
ViT-B/14 (registers) weights (downloaded through timm, or ``--encoder-weights``) and the dataset. It
checks all three before training and exits with status 2 and one line per missing piece.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG_NAMES = {"MVTecAD": "mvtec", "Visa": "visa", "RealIAD": "realiad"}


def missing_categories(dataset: str, root: Path, categories: list[str]) -> list[str]:
    """Categories whose data is not where anomalib's datamodule for ``dataset`` reads it."""

    def present(category: str) -> bool:
        if dataset == "MVTecAD":
            return (root / category / "train" / "good").is_dir()
        if dataset == "Visa":  # prepared split, or the raw download anomalib prepares on first use
            return (root / "visa_pytorch" / category).is_dir() or (root / category).is_dir()
        json = root / "realiad_jsons" / "realiad_jsons" / f"{category}.json"
        return (root / "realiad_1024" / category).is_dir() and json.is_file()

    return [category for category in categories if not present(category)]


def check_requirements(dataset: str, root: Path, encoder_weights: Path | None) -> list[str]:
    """One line per missing requirement (GPU, dataset, weights file); empty when all are there."""
    import torch

    from anomalib_dinomaly.data.multi_class import known_categories

    problems = []
    if not torch.cuda.is_available():
        problems.append(
            "No CUDA GPU: the paper's settings train a ViT-B for 10,000-50,000 steps at 392 px (days on a CPU)."
        )
    if not root.is_dir():
        problems.append(f"Dataset root {root} does not exist: download {dataset} there or pass --root.")
    else:
        missing = missing_categories(dataset, root, list(known_categories(dataset)))
        if missing:
            problems.append(f"{dataset} under {root} lacks the categories {missing}.")
    if encoder_weights is not None and not encoder_weights.is_file():
        problems.append(f"Encoder weights file {encoder_weights} does not exist.")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, check requirements, train and test, print the table beside the paper's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(CONFIG_NAMES), default="MVTecAD")
    parser.add_argument("--root", type=Path, required=True, help="dataset root, as anomalib's datamodule expects it")
    parser.add_argument("--setting", choices=["unified", "separated"], default="unified")
    parser.add_argument("--encoder-weights", type=Path, help="local DINOv2 weights (.safetensors or Meta .pth)")
    parser.add_argument("--output", type=Path, default=Path("results/benchmark"))
    parser.add_argument("--max-steps", type=int, help="override the paper's training steps (quick trials)")
    args = parser.parse_args(argv)

    problems = check_requirements(args.dataset, args.root, args.encoder_weights)
    if problems:
        print("Cannot run the benchmark:\n" + "\n".join(f"  - {line}" for line in problems), file=sys.stderr)
        return 2

    from anomalib.engine import Engine

    from anomalib_dinomaly import Dinomaly, PretrainedWeightsError
    from anomalib_dinomaly.data import MultiClass
    from anomalib_dinomaly.metrics import PAPER_RESULTS
    from anomalib_dinomaly.separated import train_separated

    config = yaml.safe_load((CONFIGS / f"dinomaly_{CONFIG_NAMES[args.dataset]}_{args.setting}.yaml").read_text())
    weights = str(args.encoder_weights) if args.encoder_weights else None
    model_args = config["model"]["init_args"] | {"encoder_weights": weights}
    trainer_args = config["trainer"]
    if args.max_steps:
        trainer_args |= {"max_steps": args.max_steps, "val_check_interval": args.max_steps}
    try:
        model = Dinomaly(**model_args)
        model.load_pretrained_encoder()  # now rather than at the start of training: fail before any data work
    except PretrainedWeightsError as error:
        print(f"Cannot run the benchmark:\n  - {error}", file=sys.stderr)
        return 2
    datamodule = MultiClass(**config["data"]["init_args"] | {"root": str(args.root)})

    if args.setting == "unified":
        engine = Engine(default_root_dir=args.output, **trainer_args)
        engine.fit(model, datamodule=datamodule)
        engine.test(model, datamodule=datamodule)
        table = model.evaluator.table
    else:
        table = train_separated(model, datamodule, args.output, **trainer_args)
    # The paper's figures are unified means (ViT-B); for the separated setting they are a reference only.
    print(table.to_markdown(reference=PAPER_RESULTS[args.dataset], reference_name="paper, unified"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
