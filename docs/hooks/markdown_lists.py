"""MkDocs hook: lists written as GitHub reads them render the same here.

Python-Markdown, unlike GitHub, needs a blank line before a list that follows a paragraph, and indents nested
lists and an item's further paragraphs by 4 spaces, not 2. The included files (CONTRIBUTING.md,
README_visualization.md) and the pages are written for GitHub, so before each page is converted: a blank line
goes in front of a list that follows a paragraph (and of an item that follows an item's second paragraph),
and inside a list every indented line's indentation is
doubled (a fenced block inside a list is shifted as a whole, so the code in it keeps its own indentation).
"""
from __future__ import annotations

import re

_ITEM = re.compile(r"([-*+]|\d+[.)])\s")
_FENCE = re.compile(r"(`{3,}|~{3,})")


def github_lists(markdown: str) -> str:
    out: list[str] = []
    in_list = False          # inside a list that starts at column 0
    loose = False            # the current item has a paragraph after a blank line
    fence = None             # (marker, shift) of an open fenced block
    prev_blank = True
    for line in markdown.split("\n"):
        stripped = line.lstrip(" ")
        if fence is not None:
            marker, shift = fence
            out.append(" " * shift + line if stripped else line)
            if stripped.startswith(marker) and not stripped.strip().strip(marker[0]):
                fence = None
            continue
        if not stripped:
            out.append(line)
            prev_blank = True
            continue
        indent = len(line) - len(stripped)
        if indent == 0:
            if _ITEM.match(line):
                if (loose or not in_list) and not prev_blank:
                    out.append("")
                in_list, loose = True, False
            elif prev_blank or stripped.startswith(("#", "|", "!!!", "???")):
                in_list = False
        elif in_list and prev_blank:
            loose = True
        shift = indent if in_list else 0
        if (f := _FENCE.match(stripped)) is not None:
            fence = (f.group(1), shift)
        out.append(" " * shift + line)
        prev_blank = False
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files, **kwargs):
    return github_lists(markdown)
