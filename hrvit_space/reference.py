"""Import checkpoints saved by the reference HRViT implementation (facebookresearch/HRViT).

Key names differ (the reference interleaves fusion and stage modules in one ``features`` Sequential,
calls the fused q/v projection ``to_qkv``, keeps the attention BN apart from its Linear, ...), tensor
layouts are the same. Covers the timm classification models (``stem``, ``features``, ``head``) and the
mmseg SegFormer models (``backbone.``, ``decode_head.``), wrapped in ``state_dict``/``model`` or not.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import torch
from torch import Tensor

from hrvit_nas import UserError
from hrvit_space.model import HRViT

_BLOCK_PARTS = {
    "attn_norm": "attn_norm", "attn.qv": "attn.to_qkv", "attn.local_conv": "attn.parallel_conv.1",
    "attn.proj.linear": "attn.to_out.0", "attn.proj.bn": "attn.attn_bn", "des.right": "des.proj_right",
    "des.left": "des.proj_left", "mlp_norm": "ffn_norm", "mlp.fc1": "ffn.fc1", "mlp.conv3": "ffn.conv.conv_3",
    "mlp.conv5": "ffn.conv.conv_5", "mlp.fc2": "ffn.fc2",
}
_FUSION_PARTS = {"dw.conv": "0", "dw.bn": "1", "pw.conv": "2", "pw.bn": "3", "conv": "0", "bn": "1"}
_CLS_HEAD_PARTS = {"conv1.conv": "conv1", "conv1.bn": "bn1", "conv2.conv": "conv2", "conv2.bn": "bn2",
                   "conv3.conv": "conv3", "conv3.bn": "bn3", "shortcut.conv": "downsample.0", "shortcut.bn": "downsample.1"}

_Rule = tuple[re.Pattern, Callable[[re.Match], str]]
_RULES: list[_Rule] = [
    (re.compile(r"stem\.conv(\d)\.(conv|bn)\.(\w+)"), lambda m: f"stem.{'conv' if m[2] == 'conv' else 'bn'}{m[1]}.{m[3]}"),
    (re.compile(r"stages\.(\d+)\.fusion\.paths\.(\d+)\.(\d+)\.((?:dw\.|pw\.)?(?:conv|bn))\.(\w+)"),
     lambda m: f"features.{2 * int(m[1])}.blocks.{m[2]}.{m[3]}.{_FUSION_PARTS[m[4]]}.{m[5]}"),
    (re.compile(r"stages\.(\d+)\.branches\.(\d+)\.embed\.(pw|dw|norm)\.(\w+)"),
     lambda m: f"features.{2 * int(m[1]) + 1}.patch_embed.{m[2]}."
               + {"pw": "proj.0", "dw": "proj.1", "norm": "norm"}[m[3]] + f".{m[4]}"),
    (re.compile(r"stages\.(\d+)\.branches\.(\d+)\.norm\.(\w+)"), lambda m: f"features.{2 * int(m[1]) + 1}.norm.{m[2]}.{m[3]}"),
    (re.compile(r"stages\.(\d+)\.branches\.(\d+)\.blocks\.(\d+)\.([\w.]+)\.(\w+)"),
     lambda m: f"features.{2 * int(m[1]) + 1}.branches.{m[2]}.{m[3]}.{_BLOCK_PARTS[m[4]]}.{m[5]}"),
    # SegFormer head (mmseg ConvModule names)
    (re.compile(r"head\.proj\.(\d+)\.(\w+)"), lambda m: f"decode_head.convs.{m[1]}.conv.{m[2]}"),
    (re.compile(r"head\.fuse\.(conv|bn)\.(\w+)"), lambda m: f"decode_head.fusion_conv.{m[1]}.{m[2]}"),
    (re.compile(r"head\.classifier\.(\w+)"), None),  # resolved per head kind below
    # HRNet-style classification head
    (re.compile(r"head\.incre\.(\d+)\.(\w+\.\w+)\.(\w+)"), lambda m: f"head.incre_modules.{m[1]}.0.{_CLS_HEAD_PARTS[m[2]]}.{m[3]}"),
    (re.compile(r"head\.downsample\.(\d+)\.(conv|bn)\.(\w+)"), lambda m: f"head.downsamp_modules.{m[1]}.{'0' if m[2] == 'conv' else '1'}.{m[3]}"),
    (re.compile(r"head\.final\.(conv|bn)\.(\w+)"), lambda m: f"head.final_layer.{'0' if m[1] == 'conv' else '1'}.{m[2]}"),
]
_HEAD_PREFIXES = ("decode_head.", "head.", "auxiliary_head.")


def reference_key(key: str, head_kind: str = "segformer") -> str:
    """The reference implementation's name for one of our state-dict keys."""
    for pattern, rename in _RULES:
        match = pattern.fullmatch(key)
        if match:
            if rename is None:  # the classifier: mmseg calls it conv_seg, timm keeps head.classifier
                return f"decode_head.conv_seg.{match[1]}" if head_kind == "segformer" else key
            return rename(match)
    raise KeyError(f"no reference name for {key!r}")


def to_reference_state_dict(model: HRViT) -> dict[str, Tensor]:
    """Our weights under the reference names (for exporting back, and for round-trip tests)."""
    kind = model.config.head.kind
    return {reference_key(key, kind): value for key, value in model.state_dict().items()}


def load_reference_state_dict(model: HRViT, state_dict: Mapping[str, Tensor]) -> HRViT:
    """Load a reference checkpoint (timm or mmseg naming) into ``model``; outputs then match the reference.

    Raises UserError listing missing / unexpected / mis-shaped keys when the checkpoint does not fit the
    config. A model without head (``head.kind: none``) ignores head weights in the checkpoint.
    """
    source = _normalise(state_dict)
    kind = model.config.head.kind
    if model.head is None:
        source = {k: v for k, v in source.items() if not k.startswith(_HEAD_PREFIXES)}
    own = model.state_dict()
    names = {reference_key(key, kind): key for key in own}
    missing = sorted(r for r, k in names.items() if r not in source and not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(source) - set(names))
    mismatched = sorted(
        f"{r} {tuple(source[r].shape)} vs {tuple(own[k].shape)}"
        for r, k in names.items() if r in source and tuple(source[r].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        raise UserError(
            "reference checkpoint does not match the config "
            f"{model.config.name or model.config.content_hash()}: "
            + "; ".join(f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if keys)
            + "; pick the config the checkpoint was trained with (preset b1/b2/b3, head kind and num_classes)"
        )
    model.load_state_dict({k: source[r] if r in source else own[k] for r, k in names.items()})
    return model


def _normalise(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Unwrap {'state_dict': ...} / {'model': ...}; drop 'module.' (DDP) and mmseg's 'backbone.' prefixes."""
    for wrapper in ("state_dict", "model"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"checkpoint entry {key!r} is not a tensor; pass the state dict of a reference HRViT checkpoint")
        key = key.removeprefix("module.").removeprefix("backbone.")
        out[key] = value
    return out
