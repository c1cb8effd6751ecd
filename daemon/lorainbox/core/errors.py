"""Errors a person can cause, written so that they can fix them.

Every problem says *what* is wrong, *where* (file and line when known) and *how* to fix it.
The same text goes to the drop's ``ERROR.md``, the notification and the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    what: str
    where: str
    fix: str

    def line(self) -> str:
        what = self.what if self.what.endswith((".", "?", "!")) else f"{self.what}."
        return f"{self.where}: {what} Fix: {self.fix}"


class DropError(Exception):
    """One or more problems that stop a drop from becoming a job (or a job from finishing)."""

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("; ".join(p.line() for p in self.problems))

    @classmethod
    def one(cls, what: str, where: str, fix: str) -> DropError:
        return cls(Problem(what, where, fix))

    def moved(self, old: Path, new: Path) -> DropError:
        """The same problems, their paths inside ``old`` now inside ``new`` (the folder moved
        from Queue/ to Failed/ after they were found)."""

        def there(text: str) -> str:
            return text.replace(str(old), str(new))

        return DropError(
            [Problem(there(p.what), there(p.where), there(p.fix)) for p in self.problems]
        )

    def in_folder(self, folder: Path) -> DropError:
        """The same problems, told for ``folder``: a drop without recipe.toml ran on the built-in
        default recipe, so "recipe.toml" would name a file it does not have."""
        if (folder / "recipe.toml").exists():
            return self
        default = "the built-in default recipe (this folder has no recipe.toml; add one to change"

        def there(where: str) -> str:
            if not where.startswith("recipe.toml"):
                return where
            return f"{default} {where.removeprefix('recipe.toml').lstrip(', ') or 'it'})"

        return DropError([Problem(p.what, there(p.where), p.fix) for p in self.problems])

    def markdown(self, title: str = "This drop could not be trained") -> str:
        parts = [f"# {title}\n"]
        for i, p in enumerate(self.problems, 1):
            head = f"## Problem {i}" if len(self.problems) > 1 else "## Problem"
            parts.append(
                f"{head}\n\n- **What:** {p.what}\n- **Where:** {p.where}\n- **How to fix:** {p.fix}\n"
            )
        parts.append(
            "Nothing was deleted. Fix the problem, then move the folder back into the inbox "
            "(or run `lorainbox retry NAME`).\n"
        )
        return "\n".join(parts)

    def to_json(self) -> list[dict[str, str]]:
        return [{"what": p.what, "where": p.where, "fix": p.fix} for p in self.problems]

    @classmethod
    def from_json(cls, items: list[dict[str, str]]) -> DropError:
        return cls([Problem(i["what"], i["where"], i["fix"]) for i in items])
