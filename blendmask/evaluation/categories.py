"""Which data set category each of a model's classes is scored as.

A weights file written by ``blendmask train`` stores the ``class_names`` and ``category_ids`` of
its training set. Evaluating it on a data set whose categories differ would score, say, the
model's "circle" as the data set's "rectangle" without a word; :func:`match_categories` refuses
that in one line, names and ids side by side, and accepts an explicit mapping instead.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

__all__ = ["CategoryMismatchError", "match_categories", "parse_class_map", "CLASS_MAP_OPTION"]

CLASS_MAP_OPTION = "--class-map"


class CategoryMismatchError(ValueError):
    """The model's classes and the data set's categories differ, and no mapping was given."""


def _side_by_side(names: Sequence[str], ids: Sequence[int]) -> str:
    return "[" + ", ".join(f"{i}:{n}" for i, n in zip(ids, names)) + "]"


def parse_class_map(text: str) -> Dict[str, str]:
    """``"model_name=data_name,..."`` -> ``{model_name: data_name}``; ``ValueError`` naming the option."""
    mapping: Dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        model_name, sep, data_name = item.partition("=")
        if not sep or not model_name.strip() or not data_name.strip():
            raise ValueError(f"{CLASS_MAP_OPTION} {text!r}: expected MODEL_CLASS=DATA_CLASS[,...], got {item!r}")
        if model_name.strip() in mapping:
            raise ValueError(f"{CLASS_MAP_OPTION} {text!r}: class {model_name.strip()!r} is mapped twice")
        mapping[model_name.strip()] = data_name.strip()
    return mapping


def match_categories(model_names: Optional[Sequence[str]], model_ids: Optional[Sequence[int]],
                     data_names: Sequence[str], data_ids: Sequence[int], *, weights: str, data: str,
                     class_map: Optional[Dict[str, str]] = None, ignore_class_names: bool = False) -> List[int]:
    """The data set category id of each model class (index = the model's label).

    Args:
        model_names, model_ids: the weights file's ``class_names`` and ``category_ids`` (None when
            it has none, e.g. a converted AdelaiDet checkpoint: then the classes are taken in the
            data set's order).
        data_names, data_ids: the data set's, in label order.
        weights, data: how messages name the two.
        class_map: ``{model class name: data class name}``; classes not in it keep their name.
        ignore_class_names: take the data set's categories in order, whatever the names.
    Raises:
        CategoryMismatchError: the names differ (and neither option resolves it), or a mapping
            names an unknown class or maps two classes onto one.
    """
    data_ids = [int(i) for i in data_ids]
    if len(data_ids) != len(model_names if model_names is not None else data_ids):
        raise CategoryMismatchError(f"{weights} predicts {len(model_names)} classes but {data} has "
                                    f"{len(data_ids)} categories")
    if ignore_class_names or model_names is None and not class_map:
        return data_ids
    model_names = list(model_names) if model_names is not None else list(data_names)
    model_ids = list(model_ids) if model_ids is not None else list(range(1, len(model_names) + 1))
    if not class_map and list(model_names) == list(data_names):
        return data_ids
    id_of = dict(zip(data_names, data_ids))
    if not class_map and sorted(model_names) == sorted(data_names):  # same classes, another order
        return [id_of[name] for name in model_names]
    if not class_map:
        raise CategoryMismatchError(
            f"{weights} was trained on categories {_side_by_side(model_names, model_ids)} but {data} has "
            f"{_side_by_side(data_names, data_ids)}: give {CLASS_MAP_OPTION} MODEL_CLASS=DATA_CLASS,... or "
            f"--ignore-class-names to score them in order")
    unknown = sorted(set(class_map) - set(model_names))
    if unknown:
        raise CategoryMismatchError(f"{CLASS_MAP_OPTION}: {weights} has no class {unknown[0]!r} "
                                    f"(its classes: {', '.join(model_names)})")
    targets = [class_map.get(name, name) for name in model_names]
    missing = [name for name in targets if name not in id_of]
    if missing:
        raise CategoryMismatchError(f"{CLASS_MAP_OPTION}: {data} has no category {missing[0]!r} "
                                    f"(its categories: {_side_by_side(data_names, data_ids)})")
    if len(set(targets)) != len(targets):
        twice = next(name for name in targets if targets.count(name) > 1)
        raise CategoryMismatchError(f"{CLASS_MAP_OPTION}: two model classes are scored as {twice!r}")
    return [id_of[name] for name in targets]
