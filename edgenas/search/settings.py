"""The search's settings, each with one default and one range for every door: `edgenas search`'s flags, a run
config's `[search]` table (`edgenas run`, `edgenas demo`) and `search_for_budget` / `BudgetJob` in Python.

- `top_k = 3`: the search at the budget and its two tighter margins (`search.budget.SEARCH_MARGINS`) gives three
  picks, so the top three measure every margin's best; each more is one more candidate exported, evaluated and
  timed on the device, per budget. (`edgenas search` had 5, `edgenas run` 3.)
- `generations`: the algorithm's own default (`search.registry`: 500 for evolution, Once-for-All's setting,
  vectorised to a few seconds; 100 for nsga2, random and rl). (`edgenas run` had a fixed 200.)
- `population = 100`, at least 4: a generation keeps a quarter of it as parents (Once-for-All's ratio), so fewer
  than 4 leaves no parent to mutate. (The flag accepted 1, its handler then refused below 4; a run config 4.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchSetting:
    """One setting: its default (None: decided elsewhere, as said in `help`), its range and a line for `--help`."""

    default: int | None
    low: int
    high: int
    help: str


SEARCH_SETTINGS = {
    "population": SearchSetting(100, 4, 100_000, "archs per generation"),
    "generations": SearchSetting(None, 1, 1_000_000,
                                 "generations (default: the algorithm's: 500 for evolution, 100 for nsga2, random and rl)"),
    "top_k": SearchSetting(3, 1, 1000, "candidates exported and measured on the device per budget"),
}
DEFAULT_POPULATION = SEARCH_SETTINGS["population"].default
DEFAULT_TOP_K = SEARCH_SETTINGS["top_k"].default
