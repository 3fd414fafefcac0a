"""Dinomaly as an anomalib ``AnomalibModule``: defaults of the paper, optimiser, per-step schedule, steps."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator, F1Score
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig, STEP_OUTPUT
from torch.optim import Optimizer
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, Resize

from anomalib_dinomaly.anomaly_map import DEFAULT_EVAL_SIZE, DEFAULT_TOP_RATIO, AnomalyMapGenerator
from anomalib_dinomaly.arguments import check_arguments
from anomalib_dinomaly.checkpoint_io import AtomicCheckpoints, check_checkpoint_file
from anomalib_dinomaly.checkpoint_model import (
    adapt_to_checkpoint,
    checkpoint_source,
    mark_checkpoint,
    refresh_datamodule_resize,
)
from anomalib_dinomaly.data_check import DataCheck, check_mask_folders
from anomalib_dinomaly.encoder import (
    DEFAULT_CROP_SIZE,
    DEFAULT_ENCODER,
    DEFAULT_IMAGE_SIZE,
    PATCH_SIZE,
    build_encoder,
    resolve_variant,
)
from anomalib_dinomaly.encoder_dinov3 import is_dinov3_name, resolve_dinov3_variant
from anomalib_dinomaly.export import DinomalyExportMixin
from anomalib_dinomaly.input_range import InputRangeCheck
from anomalib_dinomaly.layers import (
    ATTENTION_EPS,
    COMPRESSED_DIM,
    DEFAULT_BOTTLENECK_DROPOUT,
    RECENTERING_EPS,
    ContextAwareRecentering,
)
from anomalib_dinomaly.loss import (
    DEFAULT_HARD_MINING_FACTOR,
    DEFAULT_HARD_MINING_FINAL,
    DEFAULT_HARD_MINING_RAMP_STEPS,
    GlobalCosineHardMiningLoss,
    hard_mining_fraction,
)
from anomalib_dinomaly.metrics import CategoryEvaluator
from anomalib_dinomaly.official import module_from_official_checkpoint
from anomalib_dinomaly.optim import (
    DEFAULT_AMSGRAD,
    DEFAULT_EPS,
    DEFAULT_FINAL_LR_RATIO,
    DEFAULT_LR,
    DEFAULT_WARMUP_STEPS,
    DEFAULT_WEIGHT_DECAY,
)
from anomalib_dinomaly.post_processor import DinomalyPostProcessor
from anomalib_dinomaly.pretrained import DeferredEncoderWeights, LoadDeferredWeights
from anomalib_dinomaly.report import TestReport
from anomalib_dinomaly.rng_state import collect_rng_state, restore_rng_state
from anomalib_dinomaly.torch_model import (
    DEFAULT_DECODER_DEPTH,
    DEFAULT_GROUPS,
    DinomalyModel,
    build_bottleneck,
    build_decoder,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 10_000  # the paper's unified training length, used when the trainer sets none
DEFAULT_MAX_GRAD_NORM = 0.1
# crop_size's default; ``None`` already means no crop, so "the encoder's default crop" needs its own value.
ENCODER_DEFAULT_CROP = "default"
RNG_STATE_KEY = "dinomaly_rng_state"


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if isinstance(size, str):
        msg = f"Expected an int or (height, width), got the string {size!r}; pass a number."
        raise TypeError(msg)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        msg = f"Expected an int or (height, width), got {size}."
        raise ValueError(msg)
    return size


def encoder_variant(name: str):  # noqa: ANN201
    """The DINOv2 or DINOv3 variant a name stands for (patch size, default geometry, layers), without building it."""
    return resolve_dinov3_variant(name) if is_dinov3_name(name) else resolve_variant(name)


class Dinomaly(DinomalyExportMixin, AnomalibModule):
    """Dinomaly: multi-class anomaly detection by loose reconstruction of frozen DINOv2 features.

    Every default is the paper's (unified MVTec-AD / VisA setting).

    Args:
        encoder_name: DINOv2 variant, e.g. ``dinov2reg_vit_base_14`` (default), ``dinov2reg_vit_small_14``,
            ``dinov2reg_vit_large_14``, or without registers ``dinov2_vit_base_14``; DINOv3 ``dinov3_vit_small_16``,
            ``dinov3_vit_base_16``, ``dinov3_vit_large_16``; timm names work too.
        pretrained: use the published encoder weights (Hugging Face hub via timm), fetched when a run first needs
            them (training, validation, test, predict or the first call) and never when a checkpoint is loaded.
        encoder_weights: local weights file (timm/HF ``.safetensors`` or Meta's ``.pth``); no network needed.
        embed_dim, depth, num_heads, num_register_tokens: override the encoder architecture (tests, other sizes).
        target_layers: encoder blocks to reconstruct; the variant's default (ViT-S/B 2..9, ViT-L 4..18 step 2).
        fuse_layer_encoder, fuse_layer_decoder: layer groups, ``[[0, 1, 2, 3], [4, 5, 6, 7]]``.
        decoder_depth: linear-attention decoder blocks (8).
        bottleneck_dropout: noisy-bottleneck dropout (0.2; 0.4 for Real-IAD).
        image_size: resize before cropping; ``None``: the encoder's default (448 for DINOv2 ViT/14, 512 for
            DINOv3 ViT/16).
        crop_size: center crop fed to the model, a multiple of the encoder's patch size (14 or 16);
            ``"default"``: the encoder's default (392 for ViT/14, 448 for ViT/16; both a 28 x 28 grid);
            ``None``: no crop. Each size resolves on its own, so ``image_size=448`` with a ViT/16 encoder means
            448 (cropped to 448), never the encoder's 512.
        lr, final_lr, weight_decay, eps, warmup_steps: StableAdamW and warm-up + cosine schedule
            (2e-3 -> 2e-4, wd 1e-4, eps 1e-10, 100 warm-up steps), stepped every optimizer step. ``final_lr``
            ``None``: no decay, constant after the warm-up (Dinomaly2's final ratio 1.0).
        max_grad_norm: gradient-norm clip (0.1), used when the trainer sets none.
        hard_mining_percent, hard_mining_ramp_steps, hard_mining_factor: the fraction ``p`` of easy points (a
            fraction despite the official name) rises linearly to 0.9 over 1,000 steps; easy points keep 0.1 of
            their gradient.
        default_max_steps: training length when the user gives neither max_steps nor max_epochs (10,000).
        eval_size, top_ratio: the score is the mean of the top 1 % of the blurred map at 256 x 256.
        check_data: check every image and mask file of the run's data sets before it starts (see
            :mod:`anomalib_dinomaly.data_check`); ``False`` skips the check.
        bottleneck_kind: ``"mlp"`` (Dinomaly's two-layer noisy MLP) or ``"compressed"`` (Dinomaly2's three layers,
            ``D -> compressed_dim -> 4D -> D``).
        compressed_dim: width of the compressed bottleneck's first layer (256).
        context_recentering: Dinomaly2's context-aware recentering of the encoder groups (off).
        recentering_eps: eps of the recentering's affine-free LayerNorm (1e-8).
        attention_eps: eps of the decoder's linear attention (1e-6; Dinomaly2 1e-8).
        amsgrad: StableAdamW with AMSGrad (on; Dinomaly2 off).
        first_layer_lr_ratio: learning rate of the bottleneck's first layer relative to ``lr`` (1; Dinomaly2 0.1).
        warmup_includes_end: Dinomaly's warm-up, at ``lr`` on its last step (on), or Dinomaly2's, at ``lr`` one
            step later (off).
        nonfinite_grads: StableAdamW on a NaN/Inf gradient: ``"ignore"`` (official Dinomaly), ``"skip_step"``,
            ``"preview"`` (see :class:`~anomalib_dinomaly.optim.StableAdamW`).
        encoder_rope_rescale: DINOv3 encoders only (DINOv2 has no RoPE and ignores it): Meta's train-mode RoPE
            coordinate rescale, a factor drawn log-uniformly in [1/R, R] per block and forward while training
            (Dinomaly2's preview trains with R = 2 active, as its frozen teacher is in train mode); ``None``
            (Dinomaly's default) keeps the teacher deterministic. Evaluation is never rescaled.
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True`` for defaults; the
            default evaluator is :class:`~anomalib_dinomaly.metrics.CategoryEvaluator`).
    """

    def __init__(
        self,
        encoder_name: str = DEFAULT_ENCODER,
        pretrained: bool = True,
        encoder_weights: str | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        num_register_tokens: int | None = None,
        target_layers: list[int] | None = None,
        fuse_layer_encoder: list[list[int]] | None = None,
        fuse_layer_decoder: list[list[int]] | None = None,
        decoder_depth: int = DEFAULT_DECODER_DEPTH,
        bottleneck_dropout: float = DEFAULT_BOTTLENECK_DROPOUT,
        image_size: int | tuple[int, int] | None = None,
        crop_size: int | tuple[int, int] | Literal["default"] | None = ENCODER_DEFAULT_CROP,
        lr: float = DEFAULT_LR,
        final_lr: float | None = DEFAULT_LR * DEFAULT_FINAL_LR_RATIO,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        eps: float = DEFAULT_EPS,
        warmup_steps: int = DEFAULT_WARMUP_STEPS,
        max_grad_norm: float = DEFAULT_MAX_GRAD_NORM,
        hard_mining_percent: float = DEFAULT_HARD_MINING_FINAL,
        hard_mining_ramp_steps: int = DEFAULT_HARD_MINING_RAMP_STEPS,
        hard_mining_factor: float = DEFAULT_HARD_MINING_FACTOR,
        default_max_steps: int = DEFAULT_MAX_STEPS,
        eval_size: int | None = DEFAULT_EVAL_SIZE,
        top_ratio: float = DEFAULT_TOP_RATIO,
        check_data: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        bottleneck_kind: str = "mlp",
        compressed_dim: int = COMPRESSED_DIM,
        context_recentering: bool = False,
        recentering_eps: float = RECENTERING_EPS,
        attention_eps: float = ATTENTION_EPS,
        amsgrad: bool = DEFAULT_AMSGRAD,
        first_layer_lr_ratio: float = 1.0,
        warmup_includes_end: bool = True,
        nonfinite_grads: str = "ignore",
        encoder_rope_rescale: float | None = None,
    ) -> None:
        check_arguments(locals())
        variant = encoder_variant(encoder_name)
        # Resolved before AnomalibModule saves the hyper-parameters, so they record the sizes in use.
        if image_size is None:
            image_size = variant.default_image_size
        if crop_size == ENCODER_DEFAULT_CROP:
            crop_size = variant.default_crop_size
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(image_size, crop_size, patch_size=variant.patch_size)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        make_encoder = partial(
            build_encoder,
            encoder_name,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            num_register_tokens=num_register_tokens,
            **({"rope_rescale_coords": encoder_rope_rescale} if is_dinov3_name(encoder_name) else {}),
        )
        encoder = make_encoder(pretrained=False, weights=encoder_weights)
        pending = pretrained and encoder_weights is None
        self._deferred_encoder_weights = DeferredEncoderWeights(make_encoder) if pending else None
        dim = encoder.embed_dim
        self.model = DinomalyModel(
            encoder,
            target_layers=target_layers,
            fuse_layer_encoder=fuse_layer_encoder or DEFAULT_GROUPS,
            fuse_layer_decoder=fuse_layer_decoder or DEFAULT_GROUPS,
            bottleneck=build_bottleneck(bottleneck_kind, dim, bottleneck_dropout, compressed_dim=compressed_dim),
            decoder=build_decoder(dim, encoder.num_heads, decoder_depth, attention_eps=attention_eps),
            encoder_group_head=ContextAwareRecentering(recentering_eps) if context_recentering else None,
            anomaly_map_generator=AnomalyMapGenerator(eval_size=eval_size, top_ratio=top_ratio),
        )
        self.loss = GlobalCosineHardMiningLoss(factor=hard_mining_factor)
        self._resumed_rng_state: dict[str, Any] | None = None
        self._input_range_check = InputRangeCheck()

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
        crop_size: int | tuple[int, int] | None = DEFAULT_CROP_SIZE,
        patch_size: int = PATCH_SIZE,
    ) -> PreProcessor:
        """Resize to ``image_size``, center-crop ``crop_size``, ImageNet normalisation.

        Raises:
            ValueError: if the crop is larger than the image or the model input is not a multiple of the
                encoder's ``patch_size`` (14 for DINOv2, 16 for DINOv3).
        """
        image_size = _pair(image_size)
        transforms: list = [Resize(image_size)]
        input_size = image_size
        if crop_size is not None:
            input_size = _pair(crop_size)
            if input_size[0] > image_size[0] or input_size[1] > image_size[1]:
                msg = f"crop_size {input_size} is larger than image_size {image_size}."
                raise ValueError(msg)
            transforms.append(CenterCrop(input_size))
        if input_size[0] % patch_size or input_size[1] % patch_size:
            msg = (
                f"The model input {input_size} (crop_size, or image_size without a crop) must be a multiple of "
                f"the encoder's patch size {patch_size}, e.g. {28 * patch_size} or {32 * patch_size}."
            )
            raise ValueError(msg)
        transforms.append(Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD))
        return PreProcessor(transform=Compose(transforms))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """The paper's seven metrics per category and their unweighted mean, written as a table.

        anomalib's default thresholded F1 scores (``image_F1Score``, ``pixel_F1Score``) are kept: they rate the
        post-processor's global threshold over all test images.
        """
        return CategoryEvaluator(
            test_metrics=[
                F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
                F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            ],
        )

    def configure_post_processor(self) -> PostProcessor:
        """anomalib's post-processing with an adaptive threshold that also works under DDP."""
        return DinomalyPostProcessor()

    def configure_callbacks(self) -> list[Callback]:
        """anomalib's component callbacks, atomic checkpoint files, deferred encoder weights, and the file check
        of :mod:`anomalib_dinomaly.data_check`."""
        callbacks = [*super().configure_callbacks(), AtomicCheckpoints(), LoadDeferredWeights()]
        if self.hparams.check_data:
            callbacks.append(DataCheck())
        callbacks.append(TestReport())
        return callbacks

    @property
    def name(self) -> str:
        """Results folder name; differs from anomalib's built-in ``Dinomaly`` so runs never mix."""
        return "DinomalyPlugin"

    @property
    def learning_type(self) -> LearningType:
        """Trained on normal images only."""
        return LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation; training length and clipping are handled in
        :meth:`apply_default_training_length` / :meth:`configure_gradient_clipping`, so that a user's
        ``max_steps`` / ``max_epochs`` / ``gradient_clip_val`` always win."""
        return {"num_sanity_val_steps": 0}

    def forward(self, batch: torch.Tensor, *args, **kwargs):  # noqa: ANN201
        """Pre-process, predict, post-process a (B, C, H, W) float batch in [0, 1], C in {1, 3, 4}; returns
        ``InferenceBatch``. Values outside [0, 1] get a warning (once)."""
        self._input_range_check(batch)
        self.load_pretrained_encoder()
        return super().forward(DinomalyModel.to_three_channels(batch), *args, **kwargs)

    def prepare_data(self) -> None:
        """Check the data folders' layout before the datamodule reads them (see ``check_data``)."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if self.hparams.check_data and datamodule is not None:
            check_mask_folders(datamodule)

    def load_pretrained_encoder(self) -> None:
        """Fetch the published encoder weights now if they are still pending (see ``pretrained``); else nothing."""
        if self._deferred_encoder_weights is not None:
            self._deferred_encoder_weights.load_into(self.model.encoder)
            self._deferred_encoder_weights = None

    @AnomalibModule.trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        """Lightning's setter, plus :meth:`apply_default_training_length` when a fit attaches this module."""
        AnomalibModule.trainer.fset(self, trainer)
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            self.apply_default_training_length(trainer)

    def apply_default_training_length(self, trainer: Trainer) -> None:
        """Train ``default_max_steps`` (the paper's 10,000) steps when the trainer was given no length at all.

        The rule: neither ``max_steps`` nor ``max_epochs`` (nor ``max_time``) was set. Lightning leaves an unset
        ``max_epochs`` as ``None`` until its fit starts and only then turns it into 1,000 epochs; ``trainer.fit``
        attaches the module before that, so here an unset ``max_epochs`` (``None``) and a user's
        ``max_epochs=1000`` differ. Whatever the user sets wins, ``max_epochs=1000`` included.
        """
        fit_loop = trainer.fit_loop
        unset = (
            fit_loop.max_epochs is None
            and trainer.max_steps == -1
            and not any(isinstance(callback, Timer) for callback in trainer.callbacks)
        )
        if unset:
            logger.info("No max_steps/max_epochs given: training the paper's %d steps.", self.hparams.default_max_steps)
            fit_loop.max_epochs = -1
            fit_loop.epoch_loop.max_steps = self.hparams.default_max_steps

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Global cosine loss with hard mining at ``p`` for the current optimizer step."""
        del args, kwargs
        encoder_groups, decoder_groups = self.model(batch.image)
        p = hard_mining_fraction(self.global_step, self.hparams.hard_mining_percent, self.hparams.hard_mining_ramp_steps)
        loss = self.loss(encoder_groups, decoder_groups, p=p)
        if not bool(torch.isfinite(loss)):
            msg = (
                f"The training loss is {loss.item()} at step {self.global_step}; stopping before it reaches the "
                "weights (saved checkpoints are intact). Causes: NaN/Inf in the images, float16 overflow "
                "(use precision='bf16-mixed' or '32-true'), or a learning rate far above 2e-3. "
                "Fix the cause and resume from the last checkpoint."
            )
            raise FloatingPointError(msg)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=True)
        return {"loss": loss}

    def on_train_batch_end(self, outputs: STEP_OUTPUT, batch: Batch, batch_idx: int) -> None:
        """After the last step, ask Lightning to stop so that it validates then, even mid-epoch.

        Lightning validates only at epoch ends; a run whose ``max_steps`` ends mid-epoch would otherwise keep
        thresholds and normalisation from earlier weights, or none at all if it never finished an epoch.
        """
        del outputs, batch, batch_idx
        if 0 < self.trainer.max_steps <= self.global_step:
            self.trainer.should_stop = True

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Fill ``pred_score`` and ``anomaly_map`` so anomalib can fit thresholds and normalisation."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """StableAdamW on bottleneck and decoder; warm-up + cosine schedule stepped every optimizer step."""
        # Imported here: this module may be loading while anomalib_dinomaly.optim imports anomalib (see there).
        from anomalib_dinomaly.optim import StableAdamW, WarmupCosineLR, trainable_parameter_groups

        hparams = self.hparams
        groups = trainable_parameter_groups(
            self.model.bottleneck, self.model.decoder, hparams.lr, hparams.get("first_layer_lr_ratio", 1.0)
        )
        optimizer = StableAdamW(
            groups,
            lr=hparams.lr,
            weight_decay=hparams.weight_decay,
            eps=hparams.eps,
            amsgrad=hparams.get("amsgrad", DEFAULT_AMSGRAD),
            nonfinite_grads=hparams.get("nonfinite_grads", "ignore"),
        )
        total_steps = self.trainer.estimated_stepping_batches
        if not 0 < total_steps < float("inf"):
            total_steps = hparams.default_max_steps
        final_lr = hparams.lr if hparams.final_lr is None else hparams.final_lr
        scheduler = WarmupCosineLR(
            optimizer,
            total_steps=int(total_steps),
            warmup_steps=hparams.warmup_steps,
            final_lr_ratio=final_lr / hparams.lr,
            warmup_includes_end=hparams.get("warmup_includes_end", True),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the total gradient norm to 0.1 unless the trainer asks for something else."""
        clip = self.hparams.max_grad_norm if gradient_clip_val is None else gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The encoder weights are in the state dict: reloading must not download or read them again."""
        self.load_pretrained_encoder()
        super().on_save_checkpoint(checkpoint)
        mark_checkpoint(self, checkpoint)
        hparams = checkpoint.get("hyper_parameters", {})
        hparams["pretrained"] = False
        hparams["encoder_weights"] = None
        checkpoint[RNG_STATE_KEY] = collect_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take the architecture from the checkpoint (it holds the encoder weights too); when training resumes,
        keep the saved random state for :meth:`on_train_start`."""
        adapt_to_checkpoint(self, checkpoint)
        self._deferred_encoder_weights = None
        super().on_load_checkpoint(checkpoint)
        refresh_datamodule_resize(self)
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._resumed_rng_state = checkpoint.get(RNG_STATE_KEY)

    @classmethod
    def from_official_checkpoint(
        cls,
        checkpoint: str | Path | Mapping[str, torch.Tensor],
        config: Mapping[str, Any] | None = None,
        **module_kwargs: Any,  # noqa: ANN401
    ) -> Dinomaly:
        """This module holding the weights of an official Dinomaly checkpoint (``ViTill.state_dict()``).

        The counterpart of Lightning's ``load_from_checkpoint`` for the official code's checkpoints (the torch
        model alone: :func:`anomalib_dinomaly.official.from_official_checkpoint`). Save it as a plugin checkpoint
        (``engine.trainer.save_checkpoint`` after ``engine.validate``, which fits thresholds and normalisation)
        or export it with ``engine.export``: see ``examples/official_to_openvino.py``.

        Args:
            checkpoint: path to a ``.pth`` / ``.safetensors`` file (read without executing code), or a state dict.
            config: architecture keys (see :data:`anomalib_dinomaly.official.OFFICIAL_CONFIG_KEYS`); ``None`` =
                the official ViT-B/14 with registers.
            **module_kwargs: other constructor arguments (``image_size``, ``crop_size``, ...), not architecture.

        Returns:
            The module in eval mode; its encoder weights come from ``checkpoint`` (nothing is downloaded).
        """
        return module_from_official_checkpoint(cls, checkpoint, config, **module_kwargs)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> Dinomaly:  # noqa: ANN401
        """anomalib's safe loading, with a clear error for an empty or cut-off file or another model's checkpoint."""
        check_checkpoint_file(checkpoint_path)
        with checkpoint_source(checkpoint_path):
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_train_start(self) -> None:
        """Continue the random streams (dropout noise, data order) of the run being resumed.

        Restored here rather than on loading, because Lightning draws random numbers while it sets up the
        loops in between. Under DDP the checkpoint holds rank 0's state; seeded ranks share it.
        """
        if self._resumed_rng_state is not None:
            restore_rng_state(self._resumed_rng_state)
            self._resumed_rng_state = None


def _register_on_import() -> None:
    from anomalib_dinomaly.registry import register

    register()


_register_on_import()
