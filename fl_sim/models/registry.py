"""Name -> builder registry, so configs select models by string.

Each model module registers a builder with ``@register_model(name, ...)`` and
declares its default and accepted normalization layers; ``build_model``
validates the config against that declaration (and against the builder's
keyword-only options) and prepends the in-model ``Normalize``.
"""

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from .errors import ModelError
from .normalize import Normalize, Stat

InputShape = tuple[int, int, int]
Builder = Callable[..., nn.Module]

NORMS: tuple[str, ...] = ("batch", "group", "none")
_FIXED_PARAMS = ("input_shape", "num_classes", "norm")


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model."""

    name: str
    builder: Builder
    default_norm: str
    norms: tuple[str, ...]
    options: tuple[str, ...]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, default_norm: str = "batch", norms: Sequence[str] = NORMS
) -> Callable[[Builder], Builder]:
    """Register ``builder(input_shape, num_classes, *, norm, **options)`` under ``name``.

    Options are the builder's keyword-only parameters besides ``norm``; anything
    else passed to ``build_model`` is rejected rather than silently ignored.
    """
    accepted = tuple(norms)
    unknown = [n for n in (*accepted, default_norm) if n not in NORMS]
    if unknown or default_norm not in accepted:
        raise ValueError(f"model {name!r}: bad norm declaration {accepted!r} / {default_norm!r}")

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        params = inspect.signature(builder).parameters.values()
        options = tuple(
            p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _FIXED_PARAMS
        )
        _REGISTRY[name] = ModelSpec(name, builder, default_norm, accepted, options)
        return builder

    return decorator


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """Look up a model, failing with a message that lists the choices."""
    try:
        return _REGISTRY[name]
    except KeyError:
        choices = ", ".join(available_models())
        raise ModelError(f"model.name: unknown model {name!r}; choose one of: {choices}") from None


def _check_shape(input_shape: Sequence[int], num_classes: int) -> InputShape:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ModelError(
            f"model.input_shape: expected three positive ints (C, H, W), got {input_shape!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"model.num_classes: expected a positive int, got {num_classes!r}")
    return shape  # type: ignore[return-value]


def build_model(
    name: str,
    input_shape: InputShape,
    num_classes: int,
    *,
    norm: str | None = None,
    mean: Stat = None,
    std: Stat = None,
    **options: object,
) -> nn.Module:
    """Build ``Sequential(normalize=Normalize, net=<model>)`` taking images in [0, 1].

    ``norm=None`` uses the model's declared default. Mean/std default to 0.5
    per channel.
    """
    spec = model_spec(name)
    shape = _check_shape(input_shape, num_classes)
    norm = spec.default_norm if norm is None else norm
    if norm not in spec.norms:
        raise ModelError(
            f"model.norm: {norm!r} is not supported by model {name!r}; "
            f"accepted: {', '.join(spec.norms)}"
        )
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "(none)"
        raise ModelError(
            f"model.options: unknown option {unknown[0]!r} for model {name!r}; accepted: {accepted}"
        )
    normalize = Normalize(shape[0], mean, std)
    net = spec.builder(shape, num_classes, norm=norm, **options)
    return nn.Sequential(OrderedDict(normalize=normalize, net=net))
