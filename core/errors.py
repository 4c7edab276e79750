"""User errors: a mistake in a recipe, a data file or a command line. The CLI prints them on one line and
exits with code 2; anything else is a bug (exit 1, with a traceback)."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. ``str(err)`` is the one-line message (it names the field or file)."""


class RecipeError(UserError):
    """Every problem found in one recipe, each with its dotted path in the file."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("; ".join(f"{source}: {p}" for p in problems))

    def lines(self) -> list[str]:
        return [f"{self.source}: {p}" for p in self.problems]
