"""Which pixels carry the direction a primary head shares with a metadata head (torch only, no Lightning).

:func:`wsca_lightning.wsc.shared_direction.shared_direction` turns a significant WSC into one unit vector ``u`` of the
embedding space: the combination of the primary head's classes most aligned with the metadata head. The scalar ``s(x)
= u . z(x)`` is then a function of the image, and its gradient says which pixels
move it. Beside it, :func:`attribute_decisions` attributes each image's own primary decision, for comparison: the
shared direction is chosen for its overlap with the metadata, so it reads the metadata's pixels wherever the backbone
encodes them; the decision shows what the primary head's own decisions are sensitive to. Neither is a test of use:
in ``experiments/marker_shortcut`` both find the hospital marker in risk-only backbones trained with the shortcut and
not in those trained without it, but in multitask models (whose hospital head trains the backbone to encode the
marker) they find it in both, more with the shortcut. Two gradient methods, written here (no Captum):

* :func:`integrated_gradients` (Sundararajan et al., ICML 2017; the default): ``(x - x0) * mean_a ds/dx(x0 + a (x -
  x0))`` over ``steps`` midpoints of the straight path, ``steps`` backward passes per image; its attributions sum to
  ``s(x) - s(x0)`` up to the Riemann sum's error (completeness);
* :func:`gradient_x_input`: ``(x - x0) * ds/dx(x)``, one backward pass per image.

The baseline ``x0`` is zeros in the model's input space: with the built-in per-image normalisation that is the
image's own mean grey, so an attribution reads "this pixel's difference from the mean grey moves ``s``".

Per pixel the attribution is summed over input channels (signed); :func:`region_fraction` is the share of its
absolute value inside a region (e.g. a hospital's burnt-in marker), to be read against the region's share of the
image (:func:`region_share`): their ratio is the *concentration* (1: no more than the region's area).

:class:`AttributionSettings` is the ``attribution`` option of the callback and of ``wsca-analyze``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from wsca_lightning.attach import BatchKey, batch_entry
from wsca_lightning.plain import is_int, to_plain
from wsca_lightning.problems import ConfigError, Problem, integer_problems

__all__ = [
    "ATTRIBUTION_METHODS",
    "AttributionSettings",
    "TaskAttribution",
    "attribute",
    "attribute_decisions",
    "gradient_x_input",
    "integrated_gradients",
    "region_fraction",
    "region_share",
    "shared_score",
    "with_input",
]

#: ``score(images (B, C, H, W)) -> (B,)``: one scalar per image, differentiable in the images.
ScoreFn = Callable[[Tensor], Tensor]


def _baseline(inputs: Tensor, baseline: Tensor | None) -> Tensor:
    return torch.zeros_like(inputs) if baseline is None else baseline.to(inputs).expand_as(inputs)


def _gradients(score: ScoreFn, points: Tensor) -> Tensor:
    """``d score / d points`` of each row (the rows are independent images), without touching parameter gradients."""
    # also when called under no_grad or inference_mode (e.g. next to an embedding pass)
    with torch.inference_mode(False), torch.enable_grad():
        points = points.detach().clone().requires_grad_(True)
        values = score(points)
        if values.shape != points.shape[:1]:
            raise ValueError(f"score must give one value per image, shape ({points.shape[0]},); got "
                             f"{tuple(values.shape)}")
        (grad,) = torch.autograd.grad(values.sum(), points)
    return grad


def gradient_x_input(score: ScoreFn, inputs: Tensor, baseline: Tensor | None = None, *,
                     batch_size: int = 64) -> Tensor:
    """``(x - x0) * ds/dx`` for every image of ``inputs`` ``(N, C, H, W)``: one backward pass per image (module
    docstring). ``baseline`` ``x0``: zeros by default; ``batch_size`` images per pass."""
    x0 = _baseline(inputs, baseline)
    out = torch.empty_like(inputs)
    for start in range(0, inputs.shape[0], batch_size):
        part = slice(start, start + batch_size)
        out[part] = (inputs[part] - x0[part]) * _gradients(score, inputs[part])
    return out


def integrated_gradients(score: ScoreFn, inputs: Tensor, baseline: Tensor | None = None, *, steps: int = 32,
                         batch_size: int = 64) -> Tensor:
    """Integrated gradients of ``score`` for every image of ``inputs`` ``(N, C, H, W)``, from ``baseline`` ``x0``
    (zeros by default) along the straight path, with ``steps`` midpoints ``a = (i + 0.5) / steps``. The path points
    of several images go through the model together, at most ``batch_size`` per pass (``steps`` passes per image in
    all)."""
    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    x0 = _baseline(inputs, baseline)
    alphas = (torch.arange(steps, dtype=inputs.dtype, device=inputs.device) + 0.5) / steps
    images_per_pass = max(1, batch_size // steps)
    out = torch.empty_like(inputs)
    for start in range(0, inputs.shape[0], images_per_pass):
        part = slice(start, start + images_per_pass)
        x, base = inputs[part], x0[part]
        delta = x - base
        # (steps, n, C, H, W) -> (steps * n, C, H, W): every path point of these images in one pass
        path = base.unsqueeze(0) + alphas.view(-1, *([1] * x.ndim)) * delta.unsqueeze(0)
        grads = _gradients(score, path.reshape(-1, *x.shape[1:])).view(steps, *x.shape)
        out[part] = delta * grads.mean(dim=0)
    return out


#: name -> method(score, inputs, *, steps, batch_size); ``steps`` matters for integrated gradients only.
ATTRIBUTION_METHODS: dict[str, Callable[..., Tensor]] = {
    "gradient_x_input": lambda score, inputs, *, steps, batch_size: gradient_x_input(score, inputs,
                                                                                     batch_size=batch_size),
    "integrated_gradients": integrated_gradients,
}


def attribute(score: ScoreFn, inputs: Tensor, method: str, *, steps: int = 32, batch_size: int = 64) -> Tensor:
    """Per-pixel attribution ``(N, H, W)`` of ``score`` on ``inputs`` ``(N, C, H, W)`` by ``method``
    (:data:`ATTRIBUTION_METHODS`), summed over the input channels."""
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"method must be one of {', '.join(ATTRIBUTION_METHODS)}, got {method!r}")
    return ATTRIBUTION_METHODS[method](score, inputs, steps=steps, batch_size=batch_size).sum(dim=1)


def region_fraction(attribution: Tensor, mask: Tensor) -> Tensor:
    """Share of the absolute attribution inside ``mask``, per image: ``sum |a| over mask / sum |a|``.

    ``attribution``: ``(N, H, W)`` (or ``(H, W)``); ``mask``: binary, broadcastable to it (one mask, or one per
    image). An image with no attribution at all gives NaN."""
    magnitude = attribution.abs().to(torch.float64)
    inside = (magnitude * mask.to(magnitude)).sum(dim=(-2, -1))
    total = magnitude.sum(dim=(-2, -1))
    return inside / total.where(total > 0, torch.full_like(total, float("nan")))


def region_share(mask: Tensor) -> Tensor:
    """The region's share of the image's pixels (``mask.mean()`` over its last two dimensions): the fraction a
    uniform attribution would give, against which :func:`region_fraction` is read."""
    return mask.to(torch.float64).mean(dim=(-2, -1))


# --- the scalar of a module and a batch ----------------------------------------------------------------------------
def with_input(batch: Any, images: Tensor, input_key: BatchKey | None = None) -> Any:
    """A shallow copy of ``batch`` whose input entry (``input_key``; default ``"image"`` of a mapping, position 0 of
    a sequence, as :func:`~wsca_lightning.attach.batch_entry` reads it) is ``images``."""
    batch_entry(batch, input_key, "input")  # the entry must exist: a KeyError naming input_key otherwise
    if isinstance(batch, Mapping):
        key = "image" if input_key is None else input_key
        return {**batch, key: images}
    position = 0 if input_key is None else int(input_key)
    items = list(batch)
    items[position] = images
    return type(batch)(items) if isinstance(batch, tuple) else items


def shared_score(embed: Callable[[Any], Tensor], batch: Any, direction: Tensor,
                 input_key: BatchKey | None = None) -> ScoreFn:
    """``s(x) = u . embed(batch with input x)``: the scalar a gradient method attributes. ``embed`` is the module's
    ``wsc_embed`` (the interface, or :class:`~wsca_lightning.attach.AttributeView`'s), ``batch`` a collated batch
    whose other entries it may read; the input entry is replaced by the images being attributed, which may be
    ``steps`` times as many rows as the batch (integrated gradients)."""
    def score(images: Tensor) -> Tensor:
        z = embed(with_input(batch, images, input_key))
        return z.to(direction.dtype) @ direction.to(z.device)

    return score


def attribute_decisions(embed: Callable[[Any], Tensor], batch: Any, inputs: Tensor, labels: Tensor, rows: Tensor,
                        method: str, *, steps: int = 32, batch_size: int = 64,
                        input_key: BatchKey | None = None) -> Tensor:
    """Per-pixel attribution ``(N, H, W)`` of each image's own primary decision, shown beside a shared direction:
    ``s_i(x) = r_{y_i} . embed(x)``, ``r`` the primary head's decision rows
    (:func:`~wsca_lightning.wsc.shared_direction.decision_rows`: a softmax head's centred rows; a sigmoid head's one
    row, negated for label 0) and ``y_i`` the image's primary label (``labels`` ``(N,)``; -1, missing, gives a zero
    map). The images of one label are attributed together."""
    labels = torch.as_tensor(labels).to(device=inputs.device, dtype=torch.int64)
    out = torch.zeros(inputs.shape[0], *inputs.shape[2:], dtype=inputs.dtype, device=inputs.device)
    for label in labels[labels >= 0].unique().tolist():
        if rows.shape[0] > 1:
            row = rows[label]
        else:
            row = rows[0] if label == 1 else -rows[0]
        chosen = labels == label
        out[chosen] = attribute(shared_score(embed, batch, row, input_key), inputs[chosen], method, steps=steps,
                                batch_size=batch_size)
    return out


# --- settings and results ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttributionSettings:
    """The ``attribution`` option: which pixels carry the primary head's shared direction with a metadata task.

    ``method``: ``integrated_gradients`` (the default: in the risk-only backbones of ``experiments/marker_shortcut``
    it puts 13-27 times the burnt-in marker's area share of the shared direction's attribution on the marker in
    every model trained with the hospital shortcut, against 4.6-7.5 times for gradient x input, and less than the
    area share in every model trained without it) or ``gradient_x_input`` (about 1/30 of the cost: one backward pass
    per image); ``steps``: integrated gradients' path points; ``max_images``: the first images of the analysis subset
    attributed; ``examples``: of which this many are drawn with overlays; ``tasks``: null = every task whose verdict
    is significant, or these tasks whatever their verdict; ``batch_size``: images (or path points) per backward
    pass."""

    method: str = "integrated_gradients"
    steps: int = 32
    max_images: int = 64
    examples: int = 4
    tasks: tuple[str, ...] | None = None
    batch_size: int = 64

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | None, key: str = "attribution") -> "AttributionSettings | None":
        """The settings of the ``attribution`` mapping (None: attribution off); raises :class:`ConfigError` keyed
        ``attribution.<key>`` with every problem."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError.at(key, f"null (off) or a mapping {{{', '.join(f.name for f in fields(cls))}}}, got "
                                      f"{value!r}")
        try:
            plain = {str(k): to_plain(v) for k, v in value.items()}
        except ValueError as err:
            raise ConfigError.at(key, f"not a plain config value: {err}") from None
        known = [f.name for f in fields(cls)]
        problems = [Problem(f"{key}.{name}", f"unknown key; valid keys: {', '.join(known)}")
                    for name in sorted(set(plain) - set(known))]
        tasks = plain.get("tasks")
        if tasks is not None and (isinstance(tasks, str) or not isinstance(tasks, (list, tuple))
                                  or not all(isinstance(t, str) for t in tasks)):
            problems.append(Problem(f"{key}.tasks", f"null (the significant tasks) or a list of task names, got "
                                                    f"{tasks!r}"))
            tasks = None
        settings = cls(**{**{k: v for k, v in plain.items() if k in known},
                          "tasks": None if tasks is None else tuple(tasks)})
        problems += settings.problems(key)  # every problem at once
        if problems:
            raise ConfigError(problems)
        return settings

    def problems(self, key: str = "attribution") -> list[Problem]:
        out = []
        if self.method not in ATTRIBUTION_METHODS:
            out.append(Problem(f"{key}.method", f"must be one of {', '.join(ATTRIBUTION_METHODS)}, got "
                                                f"{self.method!r}"))
        lower_bounds = (("steps", 1), ("max_images", 1), ("examples", 0), ("batch_size", 1))
        out += integer_problems([(f"{key}.{name}", getattr(self, name), low) for name, low in lower_bounds])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "steps": self.steps, "max_images": self.max_images, "examples": self.examples,
                "tasks": None if self.tasks is None else list(self.tasks), "batch_size": self.batch_size}


@dataclass(frozen=True, eq=False)
class TaskAttribution:
    """One task's attribution over the first images of the analysis subset (CPU tensors).

    ``eq=False``: tensor fields have no single truth value."""

    task: str
    method: str
    steps: int | None  # integrated gradients' path points; None for gradient x input
    indices: list[int]  # the images' rows in the analysed dataset
    images: Tensor  # (N, C, H, W) the model's inputs
    attributions: Tensor  # (N, H, W) signed, summed over channels
    labels: Tensor  # (N,) the task's labels of these images (-1 = missing)
    decision_attributions: Tensor  # (N, H, W) signed: each image's own primary decision (attribute_decisions)
    primary_labels: Tensor  # (N,) the primary labels whose decisions those are (-1 = missing: a zero map)
    strength: float  # the shared part's singular value
    share: float  # cosine between the attributed direction and the metadata head's span
    seconds: float  # the shared direction's attribution time (all images)
    decision_seconds: float  # the decisions' attribution time (all images; computed once for every task)

    def to_dict(self) -> dict[str, Any]:
        """The plain-Python part (``wsc/attribution/<task>.json``)."""
        return {"task": self.task, "method": self.method, "steps": self.steps, "n_images": len(self.indices),
                "indices": list(self.indices), "strength": self.strength,
                "share": self.share, "seconds": self.seconds,
                "seconds_per_image": self.seconds / max(1, len(self.indices)),
                "decision_seconds": self.decision_seconds,
                "maps": {"attributions": "the shared direction u . z(x) (the primary classes' contrast most aligned "
                                         "with the task)",
                         "decision_attributions": "each image's own primary decision"}}
