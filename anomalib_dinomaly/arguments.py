"""Range checks of the model's constructor arguments, so a bad value fails at construction with its name.

Without them some values fail late with an unrelated torch error (``crop_size=0``, ``num_register_tokens=-1``),
are misread (``crop_size="98"`` as 9 x 8) or silently replaced by the default (``embed_dim=0``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def _is_int(value: Any) -> bool:  # noqa: ANN401
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:  # noqa: ANN401
    return isinstance(value, int | float) and not isinstance(value, bool)


def _refuse(name: str, value: Any, wanted: str, example: str) -> None:  # noqa: ANN401
    msg = f"{name} must be {wanted}, got {value!r} ({type(value).__name__}); e.g. {name}={example}."
    raise ValueError(msg)


def _integer(minimum: int, example: str, optional: bool = False) -> Callable[[str, Any], None]:
    wanted = ("a positive integer" if minimum == 1 else f"an integer >= {minimum}") + (" or None" if optional else "")

    def check(name: str, value: Any) -> None:  # noqa: ANN401
        if value is None and optional:
            return
        if not _is_int(value) or value < minimum:
            _refuse(name, value, wanted, example)

    return check


def _number(
    low: float,
    high: float,
    low_closed: bool,
    high_closed: bool,
    example: str,
    optional: bool = False,
) -> Callable[[str, Any], None]:
    wanted = f"a number in {'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
    wanted += " or None" if optional else ""

    def check(name: str, value: Any) -> None:  # noqa: ANN401
        if value is None and optional:
            return
        if not _is_number(value):
            _refuse(name, value, wanted, example)
        above = value >= low if low_closed else value > low
        below = value <= high if high_closed else value < high
        if not (above and below):
            _refuse(name, value, wanted, example)

    return check


def _size(example: str, keyword: str | None = None) -> Callable[[str, Any], None]:
    wanted = "a positive integer or (height, width) of positive integers" + (f", {keyword!r}" if keyword else "")
    wanted += " or None"

    def check(name: str, value: Any) -> None:  # noqa: ANN401
        if value is None or (keyword is not None and value == keyword):
            return
        parts = list(value) if isinstance(value, list | tuple) else [value]
        if len(parts) not in {1, 2} or not all(_is_int(part) and part > 0 for part in parts):
            _refuse(name, value, wanted, example)

    return check


_INF = float("inf")
_RULES: dict[str, Callable[[str, Any], None]] = {
    "embed_dim": _integer(1, "384", optional=True),
    "depth": _integer(1, "12", optional=True),
    "num_heads": _integer(1, "6", optional=True),
    "num_register_tokens": _integer(0, "4", optional=True),
    "decoder_depth": _integer(1, "8"),
    "bottleneck_dropout": _number(0, 1, True, False, "0.2"),
    "image_size": _size(example="448"),
    "crop_size": _size(example="392", keyword="default"),
    "lr": _number(0, _INF, False, False, "0.002"),
    "final_lr": _number(0, _INF, True, False, "0.0002", optional=True),
    "weight_decay": _number(0, _INF, True, False, "0.0001"),
    "eps": _number(0, _INF, False, False, "1e-10"),
    "warmup_steps": _integer(0, "100"),
    "max_grad_norm": _number(0, _INF, True, False, "0.1"),
    "hard_mining_percent": _number(0, 1, True, False, "0.9"),
    "hard_mining_ramp_steps": _integer(0, "1000"),
    "hard_mining_factor": _number(0, 1, True, True, "0.1"),
    "default_max_steps": _integer(1, "10000"),
    "eval_size": _integer(1, "256", optional=True),
    "top_ratio": _number(0, 1, False, True, "0.01"),
    "compressed_dim": _integer(1, "256"),
    "recentering_eps": _number(0, _INF, False, False, "1e-8"),
    "attention_eps": _number(0, _INF, True, False, "1e-8"),
    "first_layer_lr_ratio": _number(0, _INF, False, False, "0.1"),
    "encoder_rope_rescale": _number(1, _INF, True, False, "2", optional=True),
}


def check_arguments(arguments: Mapping[str, Any]) -> None:
    """Refuse out-of-range values among ``arguments`` (a constructor's ``locals()``); other names are ignored.

    Raises:
        ValueError: naming the argument, the value, what is allowed and an example.
    """
    for name, value in arguments.items():
        rule = _RULES.get(name)
        if rule is not None:
            rule(name, value)
