"""What the starting models carry: element names (a similar material through `element_substitution`) and
branches (a multi-task PyTorch checkpoint, fine-tuned from one branch with `model_branch`)."""

from __future__ import annotations

from pathlib import Path


def models_type_map(type_map: list[str], substitution: dict[str, str]) -> list[str]:
    """The starting models' element names for `type_map`, with `substitution` = {new element: old element}."""
    return [substitution.get(t, t) for t in type_map]


def check_substitution(type_map: list[str], substitution: dict[str, str]) -> None:
    """Every new element is in type_map and stands in for an element no other entry of type_map names."""
    unknown = sorted(set(substitution) - set(type_map))
    if unknown:
        raise ValueError(f"element_substitution: {unknown} not in type_map {type_map} (keys are the new material's "
                         "elements, values the starting models' elements they take the place of)")
    old = models_type_map(type_map, substitution)
    twice = sorted({t for t in old if old.count(t) > 1})
    if twice:
        raise ValueError(f"element_substitution: two elements of type_map {type_map} would both be the models' "
                         f"{twice}; the models hold one set of parameters per element")


def pt_branches(path: str | Path) -> list[str] | None:
    """The branch names of a deepmd-kit PyTorch checkpoint (.pt), or None when it has a single model."""
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = state.get("model", state)
    params = state.get("_extra_state", {}).get("model_params", {})
    return sorted(params["model_dict"]) if "model_dict" in params else None
