"""Which folders a LaunchAgent may not read on a Mac, checked on real folders and symlinks."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorainbox.platform.privacy import places_to_check, privacy_warnings, protected_area


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "Users" / "me"
    for sub in ("Documents", "Desktop", "Downloads", "Library/Mobile Documents", "LoRAInbox"):
        (home / sub).mkdir(parents=True)
    return home


@pytest.mark.parametrize(
    ("sub", "area"),
    [
        ("Documents/LoRAInbox", "~/Documents"),
        ("Desktop/venv", "~/Desktop"),
        ("Downloads", "~/Downloads"),
        ("Library/Mobile Documents/com~apple~CloudDocs/inbox", "iCloud Drive"),
        ("LoRAInbox", None),
        ("DocumentsOld", None),
    ],
)
def test_protected_areas(home: Path, sub: str, area: str | None) -> None:
    assert protected_area(home / sub, home) == area


def test_external_volumes_are_protected(home: Path) -> None:
    assert protected_area(Path("/Volumes/T7/LoRAInbox"), home) == "the volume /Volumes/T7"
    assert protected_area(Path("/Volumes"), home) is None


def test_a_symlink_is_judged_by_where_it_points(home: Path) -> None:
    link = home / "LoRAInbox-link"
    link.symlink_to(home / "Documents")
    assert protected_area(link, home) == "~/Documents"


def test_warnings_name_the_place_and_both_fixes(home: Path, tmp_path: Path) -> None:
    python = tmp_path / "python3.11"
    python.write_text("")
    places = places_to_check(
        home / "Documents" / "LoRAInbox",
        home / "LoRAInbox" / ".venv",
        {"HF_HOME": "/Volumes/T7/hf"},
    )
    warnings = privacy_warnings(places, home=home, python=python, platform="darwin")
    assert len(warnings) == 2
    inbox, hf = warnings
    assert inbox.startswith(f"the inbox ({home / 'Documents' / 'LoRAInbox'}) is in ~/Documents")
    assert "Operation not permitted" in inbox and "Full Disk Access" in inbox
    assert str(python) in inbox and "--inbox ~/LoRAInbox" in inbox
    assert hf.startswith("$HF_HOME (/Volumes/T7/hf) is in the volume /Volumes/T7")
    assert privacy_warnings(places, home=home, python=python, platform="linux") == []


@pytest.mark.parametrize("resolver", ["resolve_base_model", "resolve_diffusion_base"])
def test_a_base_model_the_agent_may_not_read_is_a_drop_error(
    resolver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a LaunchAgent gets in ~/Documents: EPERM from stat, which Path.exists raises; the
    language-model and the diffusion resolvers say it alike."""
    from lorainbox.core.errors import DropError
    from lorainbox.models import base

    def refused(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "stat", refused)
    with pytest.raises(DropError) as caught:
        getattr(base, resolver)("~/Documents/models/qwen", tmp_path)
    text = str(caught.value)
    assert "Operation not permitted" in text and "Full Disk Access" in text
    assert "`base_model`" in text
