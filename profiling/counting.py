"""Parameter and compute counting, broken down by HRViT component and branch.

FLOPs come from fvcore's ``FlopCountAnalysis`` (jit trace) plus handles for every op HRViT runs that
fvcore skips by default. ``scaled_dot_product_attention`` matters most: without a handle fvcore (and,
silently, ``torch.utils.flop_counter`` on CPU) counts it as 0, losing ~40% of an SDPA model's MACs.

Convention: MACs are the multiply-accumulates of convolutions, linear layers, matmuls and attention
(Q.K^T and A.V); FLOPs = 2 x MACs. Everything else (norms, activations, softmax, elementwise adds and
multiplies, interpolation, pooling) is counted apart as ``other_ops``, one op per element as fvcore
does (norms and bilinear interpolation use fvcore's 4-5 per element). Pure data movement (pad, cat,
views) costs 0 and is handled, so ``uncounted`` lists only ops nobody has a rule for.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ComponentOf = Callable[[str], "tuple[str, int | None]"]

# fvcore-simplified operator names whose counts are multiply-accumulates.
MAC_OPERATORS = frozenset({"conv", "linear", "addmm", "bmm", "matmul", "mm", "einsum", "attention_matmul"})
SHARED_BRANCH = "shared"
OTHER_COMPONENT = "other"


@dataclass(frozen=True)
class FlopReport:
    """Compute of one forward pass; ``macs`` excludes ``other_ops`` (see the module docstring)."""

    macs: int
    other_ops: int
    by_operator: dict[str, int]  # MAC operators and other ops alike, see MAC_OPERATORS
    macs_by_component: dict[str, int]
    macs_by_branch: dict[str, int]
    uncounted: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _shape(value: Any) -> list[int]:
    return value.type().sizes()


def _numel(value: Any) -> int:
    return math.prod(_shape(value))


def _sdpa_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    """Q.K^T and A.V: L*S*E + L*S*Ev MACs per (batch, head); softmax over L*S scores."""
    query, key, value = (_shape(v) for v in inputs[:3])
    rows = math.prod(query[:-1])  # batch x heads x L (grouped KV heads are broadcast to every query head)
    keys = key[-2]
    return Counter({
        "attention_matmul": rows * keys * (query[-1] + value[-1]),
        "attention_softmax": rows * keys,
    })


def _matmul_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """Output elements x contracted size; fvcore's own handle drops the batch dims of a broadcast operand."""
    return _numel(outputs[0]) * _shape(inputs[0])[-1]


def _per_output_element(inputs: list[Any], outputs: list[Any]) -> int:
    return _numel(outputs[0])


def _per_input_element(inputs: list[Any], outputs: list[Any]) -> int:
    return _numel(inputs[0])


def _free(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


_ELEMENTWISE = (
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "abs", "pow", "sqrt", "rsqrt", "exp",
    "softmax", "log_softmax", "sigmoid", "hardsigmoid", "hardswish", "hardswish_", "gelu", "silu", "relu", "relu_",
    "relu6", "leaky_relu", "tanh", "clamp", "clamp_", "hardtanh", "hardtanh_", "masked_fill", "where",
)
_REDUCTIONS = ("mean", "sum", "avg_pool2d", "max_pool2d", "adaptive_max_pool2d", "linalg_vector_norm", "norm")
_DATA_MOVEMENT = (
    "pad", "constant_pad_nd", "reflection_pad2d", "replicate_pad2d", "cat", "stack", "roll", "contiguous", "clone",
    "dropout", "feature_dropout", "unflatten", "flatten", "expand_as", "repeat", "pixel_shuffle", "pixel_unshuffle",
    "im2col", "col2im", "unfold", "chunk", "split", "view", "reshape", "permute", "transpose", "to", "copy_", "fill_",
    "zeros", "ones", "arange", "linspace", "meshgrid", "select", "slice", "index", "gather", "repeat_interleave",
    "new_zeros", "zeros_like", "ones_like", "empty_like", "detach", "alias", "lift_fresh", "type_as", "view_as", "squeeze",
    "unsqueeze", "expand", "narrow", "unbind", "split_with_sizes", "movedim", "flip",
)


def extra_op_handles() -> dict[str, Callable]:
    """Handles fvcore lacks (or gets wrong), keyed by jit op name (``aten::...``)."""
    handles: dict[str, Callable] = {
        "aten::scaled_dot_product_attention": _sdpa_handle,
        "aten::matmul": _matmul_handle,
        "aten::mm": _matmul_handle,
    }
    handles.update({f"aten::{name}": _per_output_element for name in _ELEMENTWISE})
    handles.update({f"aten::{name}": _per_input_element for name in _REDUCTIONS})
    handles.update({f"aten::{name}": _free for name in _DATA_MOVEMENT})
    handles["aten::upsample_bicubic2d"] = lambda i, o: 16 * _numel(o[0])
    return handles


def _branch_key(branch: int | None) -> str:
    return SHARED_BRANCH if branch is None else str(branch)


def _component_or_other(component_of: ComponentOf, name: str) -> tuple[str, int | None]:
    """A container that computes directly (not inside one component) is shown as ``other``, not dropped."""
    try:
        return component_of(name)
    except ValueError:
        return OTHER_COMPONENT, None


def _default_component_of() -> ComponentOf:
    from hrvit_space import component_of

    return component_of


def count_params(model: nn.Module, component_of: ComponentOf | None = None) -> tuple[int, dict[str, int], dict[str, int]]:
    """(total, by component, by branch); a parameter belongs to the module that owns it."""
    component_of = component_of or _default_component_of()
    by_component: Counter = Counter()
    by_branch: Counter = Counter()
    total = 0
    for name, parameter in model.named_parameters():
        component, branch = _component_or_other(component_of, name.rpartition(".")[0])
        count = parameter.numel()
        total += count
        by_component[component] += count
        by_branch[_branch_key(branch)] += count
    return total, dict(by_component), dict(by_branch)


def _self_counts(per_module: dict[str, Counter]) -> dict[str, Counter]:
    """fvcore gives each module the counts of its whole subtree; keep only what runs in the module itself."""
    own = {name: Counter(counts) for name, counts in per_module.items()}
    for name, counts in per_module.items():
        if name:
            parent = name.rpartition(".")[0]
            while parent not in own:  # skip prefixes that are not modules
                parent = parent.rpartition(".")[0]
            own[parent].subtract(counts)
    return own


def count_flops(
    model: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], component_of: ComponentOf | None = None
) -> FlopReport:
    """Trace one forward pass (put the model in eval mode first) and count MACs and other ops.

    ``component_of(module_name) -> (component, branch)`` attributes each module's own MACs; it defaults to
    HRViT's ``hrvit_space.model.component_of``. Give ``inputs`` as the model's positional arguments.
    """
    from fvcore.nn import FlopCountAnalysis

    component_of = component_of or _default_component_of()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**extra_op_handles())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_operator = analysis.by_operator()
        per_module = analysis.by_module_and_operator()
        uncounted = dict(analysis.unsupported_ops())
    macs_by_component: Counter = Counter()
    macs_by_branch: Counter = Counter()
    for name, counts in _self_counts(per_module).items():
        macs = sum(v for op, v in counts.items() if op in MAC_OPERATORS)
        if macs:
            component, branch = _component_or_other(component_of, name)
            macs_by_component[component] += macs
            macs_by_branch[_branch_key(branch)] += macs
    macs = sum(v for op, v in by_operator.items() if op in MAC_OPERATORS)
    other = sum(v for op, v in by_operator.items() if op not in MAC_OPERATORS)
    return FlopReport(
        macs=int(macs),
        other_ops=int(other),
        by_operator={op: int(v) for op, v in by_operator.most_common()},
        macs_by_component=dict(macs_by_component),
        macs_by_branch=dict(macs_by_branch),
        uncounted=uncounted,
    )

