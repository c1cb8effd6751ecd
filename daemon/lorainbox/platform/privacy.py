"""macOS privacy (TCC): folders a LaunchAgent may not read although Terminal can.

A process launchd starts gets "Operation not permitted" in ~/Documents, ~/Desktop,
~/Downloads, iCloud Drive (~/Library/Mobile Documents) and on other volumes (/Volumes/…),
and it cannot show the prompt that grants access: Terminal's own grant does not carry over.
Apple, "Protecting user data" (Platform Security Guide) and the "Files and Folders" and "Full
Disk Access" panes of System Settings > Privacy & Security describe the protected places.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PROTECTED = ("Desktop", "Documents", "Downloads", "Library/Mobile Documents")
"""Below the home folder; "Library/Mobile Documents" is iCloud Drive."""
VOLUMES = Path("/Volumes")


def protected_area(path: Path, home: Path) -> str | None:
    """The protected place ``path`` lies in ("~/Documents", "an external volume ..."), or None.

    Symlinks are followed first: macOS checks the real path, so a link from ~/LoRAInbox into
    ~/Documents is as blocked as the folder itself.
    """
    real = _real(path)
    real_home = _real(home)
    for sub in PROTECTED:
        if real.is_relative_to(real_home / sub):
            return "iCloud Drive" if sub.startswith("Library") else f"~/{sub}"
    if real.is_relative_to(VOLUMES) and len(real.parts) > 2:
        return f"the volume {VOLUMES / real.parts[2]}"
    return None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def privacy_warnings(
    places: Mapping[str, Path], *, home: Path, python: Path, platform: str
) -> list[str]:
    """One warning per place (``{"the inbox": path, ...}``) the agent will not be allowed to
    read, with the two fixes: Full Disk Access for the Python binary, or moving the folder."""
    if platform != "darwin":
        return []
    found = [
        (what, path, area)
        for what, path in places.items()
        if (area := protected_area(path, home)) is not None
    ]
    binary = _real(python)
    return [
        f"{what} ({path}) is in {area}, which macOS keeps from background agents: the daemon "
        f'would get "Operation not permitted" there although Terminal can read it. Either '
        f"move it out (for the inbox: `lorainbox agent install --inbox ~/LoRAInbox`), or give "
        f"{binary} Full Disk Access (System Settings > Privacy & Security > Full Disk Access, "
        f"+, then Cmd-Shift-G and paste that path) and run `lorainbox agent install` again"
        for what, path, area in found
    ]


def places_to_check(inbox: Path, prefix: Path, env: Mapping[str, str]) -> dict[str, Path]:
    """What the agent reads: the inbox, this Python environment, and model caches moved by
    their environment variables (a base model given as a path is checked by its recipe)."""
    places = {"the inbox": inbox, "the Python environment": prefix}
    for var in ("HF_HOME", "HF_HUB_CACHE", "OLLAMA_MODELS"):
        if env.get(var):
            places[f"${var}"] = Path(env[var])
    return places
