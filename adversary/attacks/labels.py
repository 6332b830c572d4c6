"""Label strategies: where the dummy batch's labels come from.

All inference reads the gradient of the last fully connected layer (W: [K, D], b: [K]).
For softmax + mean cross-entropy, dL/db_k = mean_n (p_nk - 1[y_n = k]) and
dL/dW_k = mean_n (p_nk - 1[y_n = k]) h_n with h_n >= 0 after ReLU/sigmoid, so the rows of
present classes are pulled negative. FedAvg deltas are turned into -delta (gradient-like).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

from adversary.attacks.registry import ConfigError, component_registry
from adversary.attacks.threat_model import AttackInputs, Component, last_linear_name
from fl_sim.threat import Capability, ThreatModel

LABEL_STRATEGIES = component_registry("label strategy")


@dataclass
class LabelGuess:
    """Hard labels [N], or initial logits [R, N, K] optimised jointly with the images."""

    labels: Tensor | None = None
    logits: Tensor | None = None

    @property
    def trainable(self) -> bool:
        return self.logits is not None


class LabelStrategy(Component):
    def infer(self, inputs: AttackInputs, threat_model: ThreatModel, num_images: int, restarts: int = 1, generator: torch.Generator | None = None) -> LabelGuess:
        raise NotImplementedError

    def check(self, num_images: int, num_classes: int) -> None:
        """Raise ConfigError (one line, naming what to use instead) if the strategy cannot serve this batch."""


def last_layer_grads(inputs: AttackInputs, lr: float | None = None) -> tuple[Tensor, Tensor | None]:
    """(dW, db) of the classifier from the observed update: something with a gradient's sign, or with
    ``lr`` the gradients themselves (a FedAvg delta divided by the learning rate)."""
    name = last_linear_name(inputs.model)
    grads = inputs.observed_gradient_like() if lr is None else {k: v.float() for k, v in inputs.gradient_estimate(lr).items()}
    if f"{name}.weight" not in grads:
        raise ValueError(f"label inference needs the update of the last linear layer {name!r}")
    return grads[f"{name}.weight"].detach(), (g.detach() if (g := grads.get(f"{name}.bias")) is not None else None)


@LABEL_STRATEGIES.register("known")
class KnownLabels(LabelStrategy):
    """Labels granted by the threat model (the paper's strongest attacker).

    Soft labels [N, K] (MixUp/InstaHide mix labels with the images) stay soft.
    """

    requires = frozenset({Capability.KNOWN_LABELS})

    def infer(self, inputs, threat_model, num_images, restarts=1, generator=None):
        labels = inputs.labels.detach()
        return LabelGuess(labels=labels if labels.is_floating_point() else labels.long())


@LABEL_STRATEGIES.register("idlg")
class IDLGLabels(LabelStrategy):
    """iDLG (Zhao et al., 2020): for one image only the true class has a negative gradient.

    Uses the argmin of the bias gradient, or of the row sums of the weight gradient without bias.
    """

    def check(self, num_images: int, num_classes: int) -> None:
        if num_images != 1:
            raise ConfigError(f"attack.labels: 'idlg' infers the label of a single image, this update holds {num_images}; "
                              "use attack.labels=count-aware (or yin when the labels are distinct)")

    def infer(self, inputs, threat_model, num_images, restarts=1, generator=None):
        self.check(num_images, inputs.num_classes)
        dw, db = last_layer_grads(inputs)
        score = db if db is not None else dw.sum(dim=1)
        return LabelGuess(labels=score.argmin().view(1))


@LABEL_STRATEGIES.register("yin")
class YinLabels(LabelStrategy):
    """Batch label restoration (Yin et al., 2021, GradInversion): the N classes whose weight-gradient
    row has the most negative entry. Exact when the N labels are distinct."""

    requires = frozenset({Capability.NUM_IMAGES})

    def check(self, num_images: int, num_classes: int) -> None:
        if num_images > num_classes:
            raise ConfigError(f"attack.labels: 'yin' needs distinct labels, and {num_images} images cannot have them "
                              f"among {num_classes} classes; use attack.labels=count-aware")

    def infer(self, inputs, threat_model, num_images, restarts=1, generator=None):
        dw, _ = last_layer_grads(inputs)
        self.check(num_images, dw.shape[0])
        return LabelGuess(labels=torch.argsort(dw.min(dim=1).values)[:num_images].sort().values)


@LABEL_STRATEGIES.register("count-aware")
class CountAwareLabels(LabelStrategy):
    """Label counts for batches with repeated labels (Geng et al., 2021, "Towards General Deep
    Leakage in Federated Learning"; the same estimate as LLG+, Wainakh et al., 2022).

    From db_k = mean_n p_nk - c_k / N:  c_k = N (p_hat_k - db_k), where p_hat is the model's mean
    softmax on ``probes`` random inputs (the attacker holds the model). Without a bias the row sums
    of dW are divided by the mean activation sum of the classifier input, estimated the same way.
    Counts are rounded by largest remainder to sum to N; every class with a negative gradient gets >= 1.

    A FedAvg update over K local steps of B images is read as the summed gradients ``-delta / lr``
    (exact for one plain SGD step), so ``C_k = N p_hat_k - B sum_t db_t,k`` with N = K B.
    """

    requires = frozenset({Capability.NUM_IMAGES})

    def __init__(self, probes: int = 64) -> None:
        self.probes = probes

    def infer(self, inputs, threat_model, num_images, restarts=1, generator=None):
        dw, db = last_layer_grads(inputs)
        if inputs.update_kind != "gradient" and threat_model.local_lr is not None:
            dw, db = last_layer_grads(inputs, threat_model.local_lr)  # the gradients' scale
        per_step = threat_model.local_batch_size if inputs.update_kind != "gradient" and threat_model.local_batch_size else num_images
        p_hat, act = self._probe(inputs, generator)
        g = db if db is not None else dw.sum(dim=1) / act
        est = (num_images * p_hat - per_step * g).clamp(min=0)
        counts = allocate_counts(est, num_images, must=(g < 0))
        labels = torch.repeat_interleave(torch.arange(len(counts)), counts)
        return LabelGuess(labels=labels)

    def _probe(self, inputs: AttackInputs, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        model = inputs.model
        layer = dict(model.named_modules())[last_linear_name(model)]
        feats: list[Tensor] = []
        hook = layer.register_forward_hook(lambda _m, i, _o: feats.append(i[0].detach()))
        x = torch.rand(self.probes, *inputs.image_shape, generator=generator)
        try:
            with torch.no_grad():
                p = torch.softmax(model(x), dim=1)
        finally:
            hook.remove()
        return p.mean(0), feats[0].sum(dim=1).mean()


def allocate_counts(est: Tensor, total: int, must: Tensor | None = None) -> Tensor:
    """Integer counts summing to ``total`` close to ``est`` (largest remainder), with >= 1 where ``must``."""
    est = est.double().clamp(min=0)
    if est.sum() > 0:
        est = est * total / est.sum()
    counts = est.floor().long()
    if must is not None and int(must.sum()) <= total:
        counts = torch.maximum(counts, must.long())
    while counts.sum() > total:
        over = torch.where(counts > (must.long() if must is not None else 0), counts - est, torch.full_like(est, -1e9))
        counts[over.argmax()] -= 1
    remainder = est - counts
    while counts.sum() < total:
        k = remainder.argmax()
        counts[k] += 1
        remainder[k] -= 1
    return counts


@LABEL_STRATEGIES.register("joint")
class JointLabels(LabelStrategy):
    """Optimise label logits with the images (DLG): soft-label cross-entropy on softmax(logits)."""

    requires = frozenset({Capability.NUM_IMAGES})

    def infer(self, inputs, threat_model, num_images, restarts=1, generator=None):
        logits = torch.randn(restarts, num_images, inputs.num_classes, generator=generator)
        return LabelGuess(logits=logits)


def label_accuracy(predicted: Tensor, true: Tensor) -> float:
    """Order-free accuracy: matched multiset size / N (batch reconstructions have no order)."""
    pred, ref = Counter(predicted.flatten().tolist()), Counter(true.flatten().tolist())
    return sum(min(c, pred[k]) for k, c in ref.items()) / max(1, true.numel())
