"""The search's settings (declared with every other knob in `edgenas.settings`), each with one default and one
range for every door: `edgenas search`'s flags, a run
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

from edgenas.settings import KNOBS, Setting

SearchSetting = Setting  # the old name: one setting's default, range and help (edgenas.settings)
SEARCH_SETTINGS = {name: KNOBS[name] for name in ("population", "generations", "top_k")}
DEFAULT_POPULATION = SEARCH_SETTINGS["population"].default
DEFAULT_TOP_K = SEARCH_SETTINGS["top_k"].default
