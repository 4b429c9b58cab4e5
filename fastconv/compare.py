"""``fastconv compare A.json B.json``: two ``fastconv bench --json`` reports, row by row.

Rows are matched by (op, shape, method); each matched row gets B's time over A's. A row is
flagged when the change passes the threshold ``t`` either way: slower when B/A > 1 + t,
faster when A/B > 1 + t (B/A < 1 / (1 + t)), so a change and its undoing are flagged alike.
"""

from __future__ import annotations

import dataclasses
import json
import math

__all__ = ["Comparison", "Match", "compare", "format_comparison", "load"]

#: What identifies a row of a report: the same problem timed with the same method.
KEY = ("op", "shape", "method")


def load(path: str) -> dict:
    """A report written by ``fastconv bench --json``, checked; ValueError says what is wrong with it."""
    from .cli import SCHEMA_VERSION

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"{path} is not JSON ({exc})") from None
    if not isinstance(data, dict) or "schema" not in data:
        raise ValueError(f"{path} is not a report of 'fastconv bench --json' (no 'schema' field)")
    if data["schema"] != SCHEMA_VERSION:
        raise ValueError(f"{path} has report schema {data['schema']!r}; this fastconv reads schema {SCHEMA_VERSION}")
    if "results" not in data:
        kind = "a 'bench --mixed' report, which has" if "mixed_step" in data else "a report with"
        raise ValueError(f"{path} is {kind} no per-shape 'results' to compare")
    if not isinstance(data["results"], list):
        raise ValueError(f"{path}: 'results' must be a list of rows")
    for i, row in enumerate(data["results"]):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in KEY):
            raise ValueError(f"{path}: row {i} lacks one of the fields {', '.join(KEY)}")
        ms = row.get("ms")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms <= 0:
            raise ValueError(f"{path}: row {i} ({' '.join(row[k] for k in KEY)}) has no positive time 'ms', "
                             f"got {ms!r}")
    if not isinstance(data.get("environment", {}), dict):
        raise ValueError(f"{path}: 'environment' must be an object")
    return data


@dataclasses.dataclass(frozen=True)
class Match:
    """One (op, shape, method) row present in both reports."""

    key: tuple
    a_ms: float
    b_ms: float
    extrapolated: bool  # either report timed it on a shrunken copy (the loop): a rough figure

    @property
    def ratio(self) -> float:
        """B's time over A's: above 1 is slower."""
        return self.b_ms / self.a_ms

    def change(self, threshold: float) -> str:
        """'slower', 'faster' or '' (within the threshold)."""
        if self.ratio > 1 + threshold:
            return "slower"
        if self.ratio * (1 + threshold) < 1:
            return "faster"
        return ""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two reports matched row by row."""

    a_environment: dict
    b_environment: dict
    matches: tuple
    only_a: tuple  # keys of rows only A has
    only_b: tuple
    threshold: float

    def slower(self) -> list:
        """The matched rows slower in B beyond the threshold."""
        return [m for m in self.matches if m.change(self.threshold) == "slower"]

    def faster(self) -> list:
        """The matched rows faster in B beyond the threshold."""
        return [m for m in self.matches if m.change(self.threshold) == "faster"]


def _rows(report: dict) -> dict:
    """key -> row, the first of each key (a report that timed a shape twice keeps its first)."""
    rows = {}
    for row in report["results"]:
        rows.setdefault(tuple(row[k] for k in KEY), row)
    return rows


def compare(a: dict, b: dict, threshold: float = 0.1) -> Comparison:
    """Match the rows of reports ``a`` and ``b`` (as :func:`load` returns them), in A's order.

    Parameters
    ----------
    a, b : dict
        Two reports of ``fastconv bench --json``.
    threshold : float
        The fraction past which a change of time is flagged (0.1: B/A above 1.1 or below 1/1.1).

    Returns
    -------
    Comparison
    """
    rows_a, rows_b = _rows(a), _rows(b)
    matches = tuple(
        Match(key, row["ms"], rows_b[key]["ms"], bool(row.get("extrapolated") or rows_b[key].get("extrapolated")))
        for key, row in rows_a.items() if key in rows_b)
    return Comparison(a.get("environment", {}), b.get("environment", {}), matches,
                      tuple(k for k in rows_a if k not in rows_b), tuple(k for k in rows_b if k not in rows_a),
                      threshold)


#: The environment fields the header shows, and the ones whose difference it points out.
_HEADER = ("date", "cpu", "threads", "dtype", "fastconv", "numba")
_MUST_MATCH = ("cpu", "threads", "dtype")


def _environment_line(label: str, name: str, env: dict) -> str:
    date, cpu, threads, dtype, version, numba = (env.get(k, "?") for k in _HEADER)
    return f"  {label}  {name}  {date}  {cpu}  threads={threads}  dtype={dtype}  fastconv {version}  numba {numba}"


def format_comparison(c: Comparison, a_name: str = "A", b_name: str = "B") -> str:
    """The terminal table: a header with both environments, one line per matched row, the unmatched rows."""
    t = c.threshold
    lines = [f"fastconv compare  B/A = B's time over A's; flagged beyond {t * 100:g}% "
             f"(B/A above {1 + t:.2f}: slower, below {1 / (1 + t):.2f}: faster)",
             _environment_line("A", a_name, c.a_environment), _environment_line("B", b_name, c.b_environment)]
    differ = [k for k in _MUST_MATCH if c.a_environment.get(k) != c.b_environment.get(k)]
    if differ:
        lines.append(f"  note: the reports differ in {', '.join(differ)}: the ratios measure that too, "
                     "not only the code")
    lines.append("")
    if c.matches:
        names = [(m.key[0], m.key[1], m.key[2] + ("*" if m.extrapolated else "")) for m in c.matches]
        w_op = max(len("op"), *(len(n[0]) for n in names))
        w_shape = max(len("shape"), *(len(n[1]) for n in names))
        w_method = max(len("method"), *(len(n[2]) for n in names))
        lines.append(f"  {'op':<{w_op}}  {'shape':<{w_shape}}  {'method':<{w_method}}"
                     f"{'A ms':>11}{'B ms':>11}{'B/A':>8}")
        for (op, shape, method), m in zip(names, c.matches):
            flag = m.change(t)
            lines.append(f"  {op:<{w_op}}  {shape:<{w_shape}}  {method:<{w_method}}"
                         f"{m.a_ms:>11.3f}{m.b_ms:>11.3f}{m.ratio:>7.2f}x" + (f"  {flag}" if flag else ""))
        if any(m.extrapolated for m in c.matches):
            lines.append("  * timed on a shrunken copy and extrapolated (the loop): a rough figure")
    else:
        lines.append("  no row is in both reports")
    for label, keys in (("only in A", c.only_a), ("only in B", c.only_b)):
        for key in keys:
            lines.append(f"  {label}: {' '.join(key)}")
    lines.append("")
    within = len(c.matches) - len(c.slower()) - len(c.faster())
    lines.append(f"{len(c.matches)} row(s) in both: {len(c.slower())} slower, {len(c.faster())} faster, "
                 f"{within} within {t * 100:g}%; {len(c.only_a)} only in A, {len(c.only_b)} only in B")
    return "\n".join(lines)
