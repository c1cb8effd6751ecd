"""Files the package carries: the built-in recipes, the LaunchAgent template, the example drop.

They live at the repository's top (``recipes/``, ``launchd/``, ``inbox/``) and reach the package
through the links in ``lorainbox/share/``, which a built wheel turns into copies: one path in a
checkout, an editable install and an installed wheel alike.
"""

from __future__ import annotations

from pathlib import Path

SHARE = Path(__file__).resolve().parent.parent / "share"
BUILTIN_RECIPES = SHARE / "recipes"
LAUNCHD_DIR = SHARE / "launchd"
EXAMPLE_DROPS = SHARE / "inbox"
