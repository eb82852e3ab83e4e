"""Whether the references look like the problem: when most of the recent verdicts made against one set of
references are "anomalous", the references more likely miss how good images vary than the line went bad.

On a line most products are good. realsets elpv_mono, four clean cells as references: 79% of the good test
cells were flagged; with two other draws of four, 4-8%. `detect` says so after a batch (`hint_line`), and
`serve` per category and reference set over its recent verdicts (`CoverageTally`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

MIN_JUDGED = 5  # fewer judged verdicts than this say nothing
WINDOW = 20  # serve: the last this many verdicts per (category, references)
MAX_KEYS = 256  # serve: reference sets remembered (the least recently used is dropped)

CLI_FIX = ("mark the false alarms normal (the page's 'wrong' button, or `anomaly-agent memory feedback IMAGE "
           "--label normal -c CATEGORY`) so that they join the references")
API_FIX = ("judge with references from memory and mark the false alarms normal (the page's 'wrong' button, or "
           "POST /v1/runs/{run_id}/feedback with label 'normal') so that they join the references")


def hint_line(judged: int, flagged: int, fix: str = CLI_FIX, what: str = "judged images") -> str | None:
    """The hint when more than half of at least `MIN_JUDGED` judged images are flagged, else None.

    Args:
        judged: verdicts that finished (failures are neither judged nor flagged).
        flagged: those of them labelled anomalous.
        fix: how the user makes a false alarm join the references where they are (CLI or API).
        what: what the counts are of, as the sentence names them.
    """
    if judged < MIN_JUDGED or flagged * 2 <= judged:
        return None
    return (f"hint: {flagged} of {judged} {what} are anomalous. If most of them are good, the references do "
            f"not show how good images vary: use references that do (more of them, or more varied), or {fix}.")


class CoverageTally:
    """The server's recent verdicts per (category, references), for `hint_line`. Thread-safe, in memory only
    (a restart starts it empty).

    A flagged verdict that the inspector confirms anomalous (feedback) stops counting as flagged: it is a
    defect, not a sign of the references. One marked normal still counts: it was a false alarm.
    """

    def __init__(self, window: int = WINDOW, max_keys: int = MAX_KEYS) -> None:
        self.window, self.max_keys = window, max_keys
        self._recent: OrderedDict[tuple[str, str], deque[tuple[str, bool]]] = OrderedDict()
        self._confirmed: set[str] = set()
        self._examples: dict[str, str] = {}  # memory example id -> the run whose feedback stored it
        self._lock = threading.Lock()

    def add(self, key: tuple[str, str], run_id: str, status: str, label: str | None) -> str | None:
        """Count one verdict (a failed one is not counted); the hint for its key afterwards, or None."""
        with self._lock:
            recent = self._recent.setdefault(key, deque(maxlen=self.window))
            self._recent.move_to_end(key)
            if status == "ok":
                recent.append((run_id, label == "anomalous"))
            while len(self._recent) > self.max_keys:
                self._recent.popitem(last=False)
            return self._hint(recent)

    def confirm(self, run_id: str, label: str, example_id: str | None = None) -> None:
        """The inspector's label of a run: 'anomalous' takes its flag out of the count (until `undo` of the
        memory example that the feedback stored)."""
        with self._lock:
            if label == "anomalous":
                self._confirmed.add(run_id)
            else:
                self._confirmed.discard(run_id)
            if example_id:
                self._examples[example_id] = run_id
            live = {r for recent in self._recent.values() for r, _ in recent}
            self._confirmed &= live
            self._examples = {e: r for e, r in self._examples.items() if r in live}

    def undo(self, example_id: str) -> None:
        """The feedback that stored this memory example was undone: its run counts as it was judged."""
        with self._lock:
            self._confirmed.discard(self._examples.pop(example_id, ""))

    def hint(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            return self._hint(self._recent.get(key, ()))

    def _hint(self, recent) -> str | None:
        flagged = sum(1 for run_id, flag in recent if flag and run_id not in self._confirmed)
        return hint_line(len(recent), flagged, API_FIX, "recent verdicts with these references")
