"""The one reader of COCO instance files: parse, validate, flatten into :class:`CocoRecords`.

:func:`load_coco_records` parses the JSON, validates every record
(:func:`blendmask.data.coco_checks.check_coco`), builds the flat records and releases the parsed
JSON before returning.
"""
from __future__ import annotations

import os

from .coco_checks import check_coco
from .coco_records import CocoRecords
from .json_files import read_json_file

__all__ = ["load_coco_records"]


def load_coco_records(ann_file: str | os.PathLike) -> CocoRecords:
    """The validated records of the COCO instance file ``ann_file``.

    Raises ``FileNotFoundError`` if the file is missing and a one-line ``ValueError`` naming the
    file (and line/column, or the record) if it is not valid JSON or breaks a rule of
    :func:`~blendmask.data.coco_checks.check_coco`."""
    ann_file = os.fspath(ann_file)
    data = read_json_file(ann_file, what="COCO annotation file")
    check_coco(data, ann_file)
    return CocoRecords.from_coco_dict(data)
