"""MkDocs hook: the core library's docstrings name other objects with Sphinx roles
(:class:`Calibration`); the API pages show the name alone."""

import re

SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(?=<code>)")


def on_page_content(html: str, **_) -> str:
    return SPHINX_ROLE.sub("", html)
