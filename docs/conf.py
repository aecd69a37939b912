"""Sphinx configuration of the geodiffusion documentation.

Built by ``tox -e docs``: ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(warnings are errors).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

import geodiffusion  # noqa: E402

project = "geodiffusion"
author = "the geodiffusion developers"
copyright = "the geodiffusion developers"
release = geodiffusion.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "gdoc",  # _ext/gdoc.py: spec tables and member lists read off the code
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# autodoc: document what a module exports, in source order, with signatures
# typed from the annotations but without repeating them in the description.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autoclass_content = "class"

napoleon_google_docstring = True
napoleon_numpy_docstring = False

myst_enable_extensions = ["dollarmath"]

html_theme = "alabaster"
html_title = f"geodiffusion {release}"
html_theme_options = {
    "description": "Diffusion models on geometric domains",
    "fixed_sidebar": True,
    "page_width": "1100px",  # room for 80-column code blocks beside the sidebar
}
