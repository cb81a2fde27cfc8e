"""Griffe extension for the API reference: keep the arithmetic of plain-text docstrings literal in Markdown.

The library's docstrings write products as ``C*kh*kw`` or ``mu*v + g``; Markdown would read ``*kh*`` as
emphasis and print "Ckhkw". Outside code spans, a single ``*`` between two operands (letters, digits,
brackets, dots) is escaped; ``*emphasis*`` after a space and ``**bold**`` are left as they are.
"""
from __future__ import annotations

import re

import griffe

_CODE = re.compile(r"(``.*?``|`[^`\n]*`)", re.S)
_PRODUCT_STAR = re.compile(r"(?<=[\w).\]])\*(?=[\w(.\[])")


def escape_products(text: str) -> str:
    parts = _CODE.split(text)
    return "".join(p if i % 2 else _PRODUCT_STAR.sub(r"\\*", p) for i, p in enumerate(parts))


class LiteralProducts(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = escape_products(obj.docstring.value)
