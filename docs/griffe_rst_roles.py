"""Griffe extension for the API reference: Sphinx roles in docstrings read as code.

The docstrings cross-reference with reStructuredText roles (``:class:`Foo```, ``:func:`~a.b```),
which Markdown would print literally. This turns each into the code span of its target's name.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`~?([^`]+)`")


class RstRolesAsCode(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda m: f"``{m.group(1)}``", obj.docstring.value)
