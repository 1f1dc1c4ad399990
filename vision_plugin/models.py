"""Model registry: small CPU models for quick runs, plus every torchvision classifier.

``build_model(name, num_classes, weights)`` accepts our registered names (``lskd_cnn_t``,
``lskd_cnn_s``, ...) and any classification model of ``torchvision.models``. Every model has a final
``nn.Linear`` whose *input* is the penultimate-layer representation ``x`` of paper Sec. 2 (logit
``x^T w_k``) and whose weight rows are the class templates used by the projection of App. F;
``find_final_linear`` locates it generically.

torchvision is imported only when a torchvision model is asked for: the small models train on
Fashion-MNIST without paying its import time.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

# "M" = 2x2 max-pool; an int = 3x3 conv -> BN -> ReLU with that many output channels.
LayerSpec = Sequence[Union[int, str]]

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, description: str = "") -> Callable:
    """Decorator: make ``name`` usable with ``--model`` (and ``--teacher``)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


class SmallConvNet(nn.Module):
    """VGG-style conv stack -> adaptive average pool to ``pool x pool`` -> flatten ->
    ``Linear(hidden)`` + BN + ReLU (the penultimate layer) -> ``fc``.

    ``forward_features`` returns the penultimate vector (input of ``fc``), i.e. the ``x`` of the
    paper's logit ``x^T w_k`` (Sec. 2); like ResNet's pooled features it is post-ReLU. The
    adaptive pool makes the network accept any input size (``--crop-size``).
    """

    def __init__(self, spec: LayerSpec, num_classes: int, hidden: int = 64, pool: int = 4,
                 in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        layers: List[nn.Module] = []
        channels = in_channels
        for item in spec:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                # bias=False: the following BatchNorm has its own shift.
                layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                           nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.penultimate = nn.Sequential(
            nn.Flatten(1), nn.Linear(channels * pool * pool, hidden, bias=False),
            nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(hidden, num_classes)
        self.feature_dim = hidden

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.penultimate(self.pool(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))


# Sizes chosen for the embedded CPU study (Fashion-MNIST 28x28, 2 CPU cores; numbers in the
# README): the teacher is ~20x larger than the student and clearly more accurate
# (88 % vs 83 % top-1 after 3 epochs on 10k images, alpha = 0.1).
TEACHER_SPEC: LayerSpec = (32, 32, "M", 64, 64, "M")
MEDIUM_SPEC: LayerSpec = (16, "M", 32, "M")
STUDENT_SPEC: LayerSpec = (8, "M", 16, "M")


@register_model("lskd_cnn_t", "teacher: conv 32-32-pool-64-64-pool, 4x4 pool, 128-d penultimate, fc; 198k params")
def lskd_cnn_t(num_classes: int = 10, **kwargs) -> nn.Module:
    return SmallConvNet(TEACHER_SPEC, num_classes, hidden=128, **kwargs)


@register_model("lskd_cnn_m", "medium: conv 16-pool-32-pool, 4x4 pool, 64-d penultimate, fc; 39k params")
def lskd_cnn_m(num_classes: int = 10, **kwargs) -> nn.Module:
    return SmallConvNet(MEDIUM_SPEC, num_classes, hidden=64, **kwargs)


@register_model("lskd_cnn_s", "student: conv 8-pool-16-pool, 4x4 pool, 32-d penultimate, fc; 10k params")
def lskd_cnn_s(num_classes: int = 10, **kwargs) -> nn.Module:
    return SmallConvNet(STUDENT_SPEC, num_classes, hidden=32, **kwargs)


def lskd_model_names() -> List[str]:
    """Names of the small models registered here."""
    return sorted(_REGISTRY)


def torchvision_classifiers() -> List[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def build_model(name: str, num_classes: int, weights: Optional[str] = None, flag: str = "--model") -> nn.Module:
    """Build ``name`` with a ``num_classes``-way final linear layer.

    Registered lskd models are built directly. Other names go to ``torchvision.models.get_model``;
    with ``weights`` (e.g. ``IMAGENET1K_V1``) the pretrained network is loaded and, when its class
    count differs (fine-tuning ImageNet weights on CUB, paper Sec. 5), its final linear layer is
    replaced by a freshly initialised ``num_classes``-way one.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if name in _REGISTRY:
        if weights:
            raise ValueError(f"--weights {weights!r}: lskd model {name!r} has no pretrained weights")
        return _REGISTRY[name](num_classes=num_classes)
    import torchvision

    known = torchvision_classifiers()
    if name not in known:
        raise ValueError(
            f"{flag} {name!r} is neither an lskd model ({', '.join(lskd_model_names())}) nor a "
            f"torchvision classification model (e.g. resnet18, resnet50, mobilenet_v2, efficientnet_b0)"
        )
    if weights:
        model = build_pretrained(name, weights, flag=flag)
        _, linear = find_final_linear(model)
        if linear.out_features != num_classes:
            replace_final_linear(model, num_classes)
        return model
    return torchvision.models.get_model(name, num_classes=num_classes)


def build_pretrained(name: str, weights: str, flag: str = "--model") -> nn.Module:
    """torchvision model ``name`` with pretrained ``weights``, head untouched."""
    if name in _REGISTRY:
        raise ValueError(f"--weights {weights!r}: lskd model {name!r} has no pretrained weights")
    import torchvision

    if name not in torchvision_classifiers():
        raise ValueError(f"{flag} {name!r} is not a torchvision classification model")
    try:
        return torchvision.models.get_model(name, weights=weights)
    except Exception as exc:  # unknown weight names, no download possible, ...
        raise ValueError(f"cannot load weights {weights!r} for model {name!r}: {exc}") from exc


def find_final_linear(model: nn.Module) -> Tuple[str, nn.Linear]:
    """Return ``(qualified_name, layer)`` of the classifier's final ``nn.Linear``.

    Its input is the penultimate representation (paper Sec. 2, App. F). Looks at the usual places
    first (resnet/regnet/our models: ``fc``; mobilenet/efficientnet/convnext/vgg/maxvit:
    ``classifier[-1]``; vit: ``heads.head``; swin: ``head``), then falls back to the last
    ``nn.Linear`` registered in the module tree.
    """
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return "fc", fc
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return "classifier", classifier
    if isinstance(classifier, nn.Sequential):
        for idx in range(len(classifier) - 1, -1, -1):
            layer = classifier[idx]
            if isinstance(layer, nn.Linear):
                return f"classifier.{idx}", layer
    heads = getattr(model, "heads", None)
    if heads is not None and isinstance(getattr(heads, "head", None), nn.Linear):
        return "heads.head", heads.head
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return "head", head
    last: Optional[Tuple[str, nn.Linear]] = None
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (qualified, module)
    if last is None:
        raise ValueError(
            f"{type(model).__name__} has no final nn.Linear layer, so its penultimate features and "
            f"class templates are undefined (e.g. squeezenet ends in a conv)"
        )
    return last


def replace_final_linear(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap the final linear layer for a fresh ``num_classes``-way one (same input size)."""
    qualified, old = find_final_linear(model)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    model.set_submodule(qualified, new)
    return new


def final_linear_state_keys(model: nn.Module) -> Tuple[str, Optional[str]]:
    """State-dict keys of the final layer's weight and bias (bias None when absent)."""
    qualified, linear = find_final_linear(model)
    return f"{qualified}.weight", (f"{qualified}.bias" if linear.bias is not None else None)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
