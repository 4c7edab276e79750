"""User errors: a mistake in a recipe, a data file or a command line. The CLI prints them on one line and
exits with code 2; anything else is a bug (exit 1, with a traceback)."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. ``str(err)`` is the one-line message (it names the field or file)."""

    def lines(self) -> list[str]:
        """What the CLI prints, a line each: the message (a :class:`RecipeError`: each problem)."""
        return [str(self)]


class RecipeError(UserError):
    """Every problem found in one recipe, each with its dotted path in the file."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {p}" for p in self.problems]


class ProblemsError(UserError):
    """Every problem found in one input (a data file, a manifest); ``str(err)`` is the first one plus a count of
    the rest, on one line; ``problems`` holds them all."""

    def __init__(self, problems: list[str], empty: str = "invalid input"):
        self.problems = list(problems)
        more = len(self.problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        super().__init__(f"{self.problems[0]}{suffix}" if self.problems else empty)
