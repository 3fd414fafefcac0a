"""The private anomalib / Lightning / timm internals the plugin relies on still have the shape it expects.

pyproject.toml bounds these packages to the versions known to work. When a bound is lifted, a failure here names
the internal, the plugin file that uses it and the installed version, instead of a silent change of behaviour.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
import torch
from torch import nn


def _changed(package: str, internal: str, user: str, problem: str) -> str:
    return (
        f"{package} {version(package)}: the private {internal} that {user} relies on changed ({problem}). "
        f"Adapt {user} to it, or keep {package} within the bound in pyproject.toml."
    )


def _parameters(function) -> list[str]:  # noqa: ANN001
    """Parameter names without a leading ``self`` (static and instance methods alike)."""
    names = list(inspect.signature(function).parameters)
    return names[1:] if names[:1] == ["self"] else names


def test_anomalib_export_quantization_hook():
    from anomalib.models.components.base.export_mixin import ExportMixin

    internal, user = "ExportMixin._post_training_quantization_ov(model, datamodule)", "anomalib_dinomaly/export.py"
    hook = getattr(ExportMixin, "_post_training_quantization_ov", None)
    assert hook is not None, _changed("anomalib", internal, user, "the method is gone")
    assert _parameters(hook) == ["model", "datamodule"], _changed(
        "anomalib", internal, user, f"its parameters are now {_parameters(hook)}"
    )
    caller = inspect.getsource(ExportMixin._compress_ov_model)
    assert "self._post_training_quantization_ov(" in caller, _changed(
        "anomalib", internal, user, "ExportMixin._compress_ov_model no longer calls it"
    )


def test_anomalib_adaptive_threshold_class_checks():
    from anomalib.metrics import F1AdaptiveThreshold

    user = "anomalib_dinomaly/post_processor.py"
    for name in ("_has_anomalous_samples", "_has_normal_samples"):
        internal = f"F1AdaptiveThreshold.{name}()"
        method = getattr(F1AdaptiveThreshold, name, None)
        assert method is not None, _changed("anomalib", internal, user, "the method is gone")
        assert _parameters(method) == [], _changed("anomalib", internal, user, f"parameters {_parameters(method)}")
        assert f"self.{name}()" in inspect.getsource(inspect.getmodule(method)), _changed(
            "anomalib", internal, user, "F1AdaptiveThreshold no longer calls it"
        )
    metric = F1AdaptiveThreshold(fields=["pred_score", "gt_label"])
    for state in ("thresholds", "target"):
        assert hasattr(metric, state), _changed("anomalib", f"F1AdaptiveThreshold.{state}", user, "the state is gone")


def test_anomalib_post_processor_threshold_metrics():
    from anomalib.metrics import F1AdaptiveThreshold
    from anomalib.post_processing import PostProcessor

    user = "anomalib_dinomaly/post_processor.py"
    processor = PostProcessor()
    source = inspect.getsource(PostProcessor)
    for name in ("_image_threshold_metric", "_pixel_threshold_metric"):
        internal = f"PostProcessor.{name}"
        assert isinstance(getattr(processor, name, None), F1AdaptiveThreshold), _changed(
            "anomalib", internal, user, "no longer an F1AdaptiveThreshold set in __init__"
        )
        assert f"self.{name}.compute()" in source, _changed("anomalib", internal, user, "PostProcessor no longer uses it")


def test_anomalib_dataset_samples_storage():
    from anomalib.data import AnomalibDataset

    internal, user = "AnomalibDataset._samples behind the samples property", "anomalib_dinomaly/data/multi_class.py"
    samples = getattr(AnomalibDataset, "samples", None)
    assert isinstance(samples, property) and samples.fset is not None, _changed(
        "anomalib", internal, user, "samples is no longer a property with a setter"
    )
    assert "self._samples" in inspect.getsource(samples.fset), _changed(
        "anomalib", internal, user, "the setter no longer stores self._samples"
    )


def test_lightning_attaches_module_before_filling_in_unset_max_epochs():
    from lightning.pytorch import LightningModule, Trainer

    internal = "order in Trainer.fit: module attached (model.trainer = ...) while an unset max_epochs is still None"
    user = "Dinomaly.apply_default_training_length (anomalib_dinomaly/lightning_model.py)"

    class RecordLimitsAtAttach(LightningModule):
        seen: list = []  # noqa: RUF012

        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)

        @LightningModule.trainer.setter
        def trainer(self, trainer) -> None:  # noqa: ANN001
            LightningModule.trainer.fset(self, trainer)
            if trainer is not None:
                self.seen.append((trainer.fit_loop.max_epochs, trainer.max_steps))

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            return self.layer(batch).sum()

        def on_train_start(self) -> None:
            self.trainer.should_stop = True

        def configure_optimizers(self):  # noqa: ANN201
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = RecordLimitsAtAttach()
    assert getattr(module, "_trainer", "missing") is None, _changed(
        "lightning", "LightningModule._trainer (None until attached)", "Dinomaly.on_load_checkpoint", "it is not None"
    )
    trainer = Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", limit_val_batches=0,
    )  # fmt: skip
    assert trainer.fit_loop.max_epochs is None, _changed("lightning", internal, user, "unset max_epochs is not None")
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=1))
    assert module.seen and module.seen[0] == (None, -1), _changed(
        "lightning", internal, user, f"at attach time (max_epochs, max_steps) = {module.seen[:1]}"
    )
    assert trainer.fit_loop.max_epochs == 1000, _changed("lightning", internal, user, "the implicit length is not 1000")
    epoch_loop = trainer.fit_loop.epoch_loop
    assert hasattr(epoch_loop, "max_steps"), _changed("lightning", "fit_loop.epoch_loop.max_steps", user, "it is gone")
    epoch_loop.max_steps = 7
    assert trainer.max_steps == 7, _changed("lightning", "fit_loop.epoch_loop.max_steps", user, "Trainer.max_steps ignores it")


def test_timm_vision_transformer_attributes():
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    user = "anomalib_dinomaly/encoder.py"
    vit = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=518, dynamic_img_size=True,
        embed_dim=24, depth=1, num_heads=2,
    )  # fmt: skip
    for name, expected in (("reg_token", torch.Tensor), ("no_embed_class", bool), ("num_reg_tokens", int)):
        assert isinstance(getattr(vit, name, None), expected), _changed(
            "timm", f"VisionTransformer.{name}", user, f"not a {expected.__name__}"
        )
    assert vit.num_reg_tokens == 4 and vit.no_embed_class, _changed("timm", "the reg4 DINOv2 models", user, "no 4 registers")
    patches = vit.patch_embed(torch.zeros(1, 3, 28, 42))
    assert patches.shape == (1, 2, 3, 24), _changed(
        "timm", "PatchEmbed output with dynamic_img_size (B, h, w, D)", user, f"shape {tuple(patches.shape)}"
    )
    assert _parameters(checkpoint_filter_fn)[:2] == ["state_dict", "model"], _changed(
        "timm", "vision_transformer.checkpoint_filter_fn(state_dict, model)", user, _parameters(checkpoint_filter_fn)
    )


@pytest.mark.parametrize("package", ["anomalib", "lightning", "timm"])
def test_installed_version_is_within_the_bound(package):
    """The bound in pyproject.toml is what these checks were written against; say so when it is exceeded."""
    import tomllib

    from packaging.requirements import Requirement

    from tests.conftest import REPO

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (requirement,) = [Requirement(d) for d in dependencies if Requirement(d).name == package]
    assert requirement.specifier.contains(version(package)), (
        f"{package} {version(package)} is outside the bound {requirement.specifier} in pyproject.toml; if this "
        "suite passes with it, lift the bound (README, 'Version bounds')."
    )
