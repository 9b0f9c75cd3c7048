"""The claims a suite checks, declared as data in its YAML, and their verdicts from the numbers.

A claim (a ``claims:`` entry of the suite file)::

    - id: gd_vs_gr                         # a short name, unique in the suite
      statement: Generative distillation keeps ...   # what is claimed, in words
      source: Masip et al., arXiv 2311.14028        # where it comes from (paper and table, or a code file)
      protocol: project                    # the protocol it is tested in (default project; others: ``protocols:``)
      table: generator                     # whose rows: generator (the methods) | classifier (the solver's replays)
      row: gd_full                         # the row the claim is about ...
      against: {best_of: [gr_masip, gr_guide]}   # ... and the row it must beat: a label, or the best of several
      metrics: {eval_fid: lower, eval_kld: lower}   # the metrics compared, each with the better direction
      rule: better                         # how the verdict is reached (RULES below)
      evidence: "final FID GD {gd_full.eval_fid} vs GR {against.eval_fid} ..."   # the numbers, a template
      rule_text: GD better than GR on both FID and KLD by more than the spread  # the rule in words (optional)
      project_claim: gd_beats_gr           # (a paper's protocol) the claim testing the same statement in this
                                           # project's protocol, shown beside it in the report (optional)

The report writes ``N. *statement* — evidence: **verdict** (rule_text).`` Every number is the mean ±
std over seeds (``evaluation.seeds``). A claim is **not measured** where a side lacks a metric (a row
the suite does not run, or not finished yet).

Rules (``register_rule``), each judged against the spread over seeds (``seeds.RULE``):

- ``better``: every metric better than ``against`` by more than the spread (``seeds.compare``, ``all_better``);
- ``not_worse``: no metric worse by more than the spread (at least as good);
- ``equivalent``: no metric worse by more than ``tolerance`` (a fraction of ``against``'s mean) or the
  spread, whichever is larger (``seeds.within_tolerance``), and, with ``cost: KEY``, a lower mean of KEY.

``against: {best_of: [A, B], by: METRIC}``: of the candidates that have ``by`` (default: the first
metric), the one with the best mean; while any candidate has no results the claim is not measured (its
line names them). ``gap: {metric: M, to: LABEL, text: "... {pct:.0f}% ..."}``: the
share of the distance from ``against`` to ``to`` in M that ``row`` covers.

``headroom: {metric: M, low: A, high: B, min: X}``: the claim can only show where B is better than A in
M by at least X (mean over seeds; e.g. joint training at least 5 points above plain replay, where a
better replay has room to show). Where it is not, the verdict is **not testable here** and the line
gives the measured headroom; while A or B has no results the claim is not measured.

Evidence placeholders: ``{LABEL.KEY}`` (a row's metric, mean ± std; ``row`` and ``against`` name the
claim's two rows), ``{against}`` (the label picked), ``{others.KEY}`` ("; LABEL value" for each other
``best_of`` candidate) and ``{gap}`` ("; " and the gap's text, where it can be computed). KEY: a key of
the claim's table (``tables.GENERATOR_KEYS``, ``tables.CLASSIFIER_KEYS``).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from guided_diffusion.evaluation.seeds import all_better, compare, mean_std, within_tolerance
from guided_diffusion.runtime.config import ConfigError

from .tables import CLASSIFIER_KEYS, GENERATOR_KEYS

Values = Dict[str, Dict[str, List[float]]]  # label -> key -> the per-seed numbers (a table's ``values``)

TABLES = {"generator": GENERATOR_KEYS, "classifier": CLASSIFIER_KEYS}
DIRECTIONS = {"lower": False, "higher": True}  # -> higher_is_better
CLAIM_KEYS = ("id", "statement", "source", "protocol", "table", "row", "against", "metrics", "rule", "tolerance",
              "cost", "gap", "headroom", "evidence", "rule_text", "project_claim")
PROJECT = "project"  # the protocol of a claim that names none: this project's settings
PROJECT_TITLE = "This project's protocol"


@dataclass
class Claim:
    id: str
    statement: str
    source: str
    table: str
    row: str
    against: List[str]  # one label, or the candidates of best_of
    metrics: List[Tuple[str, bool]]  # (key, higher_is_better)
    rule: str
    evidence: str
    protocol: str = PROJECT
    best_by: str = ""  # with several candidates: the key that picks the best
    tolerance: Optional[float] = None
    cost: str = ""
    gap: Dict[str, Any] = field(default_factory=dict)
    headroom: Dict[str, Any] = field(default_factory=dict)  # {metric, low, high, min}: where the claim can show
    rule_text: str = ""
    project_claim: str = ""  # the same statement's claim in this project's protocol (another suite's), if any


# ---------------------------------------------------------------------------------------------- rules

Rule = Callable[[Claim, Dict[str, List[float]], Dict[str, List[float]]], str]
RULES: Dict[str, Rule] = {}


def register_rule(name: str):
    """Register ``fn(claim, row_values, against_values) -> verdict`` (confirmed | not confirmed | not resolved)."""
    def wrap(fn):
        RULES[name] = fn
        return fn

    return wrap


@register_rule("better")
def rule_better(claim: Claim, row, against) -> str:
    return all_better([compare(row[k], against[k], hib) for k, hib in claim.metrics])


@register_rule("not_worse")
def rule_not_worse(claim: Claim, row, against) -> str:
    outcomes = [compare(row[k], against[k], hib) for k, hib in claim.metrics]
    if "worse" in outcomes:
        return "not confirmed"
    return "not resolved" if None in outcomes else "confirmed"


@register_rule("equivalent")
def rule_equivalent(claim: Claim, row, against) -> str:
    within = [within_tolerance(row[k], against[k], claim.tolerance, hib) for k, hib in claim.metrics]
    if None in within:
        return "not resolved"
    cheaper = not claim.cost or float(np.mean(row[claim.cost])) < float(np.mean(against[claim.cost]))
    return "confirmed" if all(within) and cheaper else "not confirmed"


# ---------------------------------------------------------------------------------------------- the suite's claims


def _fields(template: str) -> List[Tuple[str, str, Optional[str]]]:
    """(literal, field, format spec) of a template (``string.Formatter`` syntax)."""
    return [(lit, f, spec) for lit, f, spec, _ in string.Formatter().parse(template)]


def parse_claims(raw, where: str, protocols: Sequence[str] = ()) -> List[Claim]:
    """The ``claims:`` list of a suite file, checked; ``where`` names the file in errors. Rows are not
    checked against the suite's (a scale may run fewer): a claim on a row it lacks is not measured."""
    if raw in (None, []):
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: claims must be a list of claims")
    out: List[Claim] = []
    for i, c in enumerate(raw):
        at = f"{where}: claim {(c.get('id') if isinstance(c, dict) else None) or i + 1}"
        claim = parse_claim(c, at, protocols)
        if claim.id in {o.id for o in out}:
            raise ConfigError(f"{at}: the id is used twice")
        out.append(claim)
    return out


def parse_claim(c, at: str, protocols: Sequence[str] = ()) -> Claim:
    """One claim's mapping, checked (``at`` names it in errors)."""
    if not isinstance(c, dict):
        raise ConfigError(f"{at}: a claim is a mapping ({', '.join(CLAIM_KEYS)})")
    bad = [k for k in c if k not in CLAIM_KEYS]
    if bad:
        raise ConfigError(f"{at}: unknown key(s) {bad}; valid: {', '.join(CLAIM_KEYS)}")
    for key in ("id", "statement", "source", "table", "row", "against", "metrics", "rule", "evidence"):
        if c.get(key) in (None, "", [], {}):
            raise ConfigError(f"{at}: needs '{key}'")
    if c["table"] not in TABLES:
        raise ConfigError(f"{at}: table {c['table']!r} is not one of {', '.join(TABLES)}")
    keys = TABLES[c["table"]]

    def key_ok(k, what):
        if k not in keys:
            raise ConfigError(f"{at}: {what} {k!r} is not a key of the {c['table']} table; valid: {', '.join(keys)}")

    if not isinstance(c["metrics"], dict):
        raise ConfigError(f"{at}: metrics is a mapping key -> lower | higher (the better direction)")
    for k, d in c["metrics"].items():
        key_ok(k, "metric")
        if d not in DIRECTIONS:
            raise ConfigError(f"{at}: metric {k}: direction {d!r} is not one of {', '.join(DIRECTIONS)}")
    metrics = [(k, DIRECTIONS[d]) for k, d in c["metrics"].items()]
    against, best_by = c["against"], ""
    if isinstance(against, dict):
        cands = against.get("best_of")
        if set(against) - {"best_of", "by"} or not isinstance(cands, list) or not cands:
            raise ConfigError(f"{at}: against is a label or {{best_of: [labels], by: metric}}")
        best_by = against.get("by") or metrics[0][0]
        if best_by not in c["metrics"]:
            raise ConfigError(f"{at}: against.by {best_by!r} is not one of the claim's metrics")
        against = [str(a) for a in cands]
    else:
        against = [str(against)]
    if c["rule"] not in RULES:
        raise ConfigError(f"{at}: rule {c['rule']!r} is not one of {', '.join(RULES)}")
    tolerance = c.get("tolerance")
    if c["rule"] == "equivalent" and not isinstance(tolerance, (int, float)):
        raise ConfigError(f"{at}: rule equivalent needs a tolerance (a fraction of the other side's mean)")
    if c["rule"] != "equivalent" and ("tolerance" in c or "cost" in c):
        raise ConfigError(f"{at}: tolerance and cost belong to rule equivalent")
    if c.get("cost"):
        key_ok(c["cost"], "cost")
    gap = c.get("gap") or {}
    if gap:
        if set(gap) != {"metric", "to", "text"}:
            raise ConfigError(f"{at}: gap is {{metric, to, text}}")
        key_ok(gap["metric"], "gap.metric")
        try:
            gap["text"].format(pct=0.0)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"{at}: gap.text {gap['text']!r}: {e!r} (its one field is {{pct}})") from None
    headroom = c.get("headroom") or {}
    if headroom:
        if not isinstance(headroom, dict) or set(headroom) != {"metric", "low", "high", "min"}:
            raise ConfigError(f"{at}: headroom is {{metric, low, high, min}} (the claim shows where high beats low "
                              "in metric by at least min)")
        key_ok(headroom["metric"], "headroom.metric")
        if headroom["metric"] not in c["metrics"]:
            raise ConfigError(f"{at}: headroom.metric {headroom['metric']!r} is not one of the claim's metrics "
                              "(its direction is theirs)")
        if not isinstance(headroom["min"], (int, float)) or headroom["min"] <= 0:
            raise ConfigError(f"{at}: headroom.min must be a positive number, got {headroom['min']!r}")
    protocol = c.get("protocol") or PROJECT
    if protocol != PROJECT and protocol not in protocols:
        raise ConfigError(f"{at}: protocol {protocol!r} is not declared in the suite's protocols "
                          f"({', '.join([PROJECT, *protocols])})")
    _check_evidence(str(c["evidence"]), at, key_ok, several=len(against) > 1, gap=bool(gap))
    return Claim(id=str(c["id"]), statement=str(c["statement"]).strip(), source=str(c["source"]).strip(),
                 table=c["table"], row=str(c["row"]), against=against, metrics=metrics, rule=c["rule"],
                 evidence=str(c["evidence"]).strip(), protocol=protocol, best_by=best_by,
                 tolerance=None if tolerance is None else float(tolerance), cost=c.get("cost") or "",
                 gap=dict(gap), headroom=dict(headroom), rule_text=str(c.get("rule_text") or "").strip(),
                 project_claim=str(c.get("project_claim") or ""))


def _check_evidence(template: str, at: str, key_ok: Callable[[str, str], None], several: bool, gap: bool) -> None:
    """Every field of the evidence template is one the renderer fills (see the module's docstring)."""
    try:
        fields = _fields(template)
    except ValueError as e:
        raise ConfigError(f"{at}: evidence: {e}") from None
    for _, f, spec in fields:
        if f is None:
            continue
        if spec:
            raise ConfigError(f"{at}: evidence field {{{f}:{spec}}}: no format spec (numbers are mean ± std)")
        if f == "against" or (f == "gap" and gap):
            continue
        head, _, key = f.partition(".")
        if not key or f == "gap":
            raise ConfigError(f"{at}: evidence field {{{f}}}: expected {{LABEL.KEY}}, {{against}}, "
                              "{others.KEY} or {gap} (with a gap)")
        if head == "others" and not several:
            raise ConfigError(f"{at}: evidence field {{{f}}}: others are the best_of candidates not picked")
        key_ok(key, f"evidence field {{{f}}}: key")


# ---------------------------------------------------------------------------------------------- verdicts


@dataclass
class Judged:
    claim: Claim
    verdict: Optional[str]  # confirmed | not confirmed | not resolved | not testable | None: not measured
    against: str  # the label judged against (the best of best_of)
    line: str  # the report's sentence, without its number


def _get(values: Values, label: str, key: str) -> List[float]:
    return (values.get(label) or {}).get(key) or []


def _pick(claim: Claim, values: Values) -> Tuple[str, List[str]]:
    """(the row judged against, the candidates that have ``best_by``)."""
    if len(claim.against) == 1:
        return claim.against[0], claim.against
    have = [g for g in claim.against if _get(values, g, claim.best_by)] or claim.against[:1]
    sign = 1.0 if dict(claim.metrics)[claim.best_by] else -1.0  # higher is better: the largest mean
    best = min(have, key=lambda g: -sign * np.mean(_get(values, g, claim.best_by)) if _get(values, g, claim.best_by)
               else np.inf)
    return best, have


def _missing(claim: Claim, values: Values) -> List[str]:
    """The ``best_of`` candidates without results: the best of several is not known while any is missing."""
    if len(claim.against) == 1:
        return []
    return [g for g in claim.against if not _get(values, g, claim.best_by)]


def headroom(claim: Claim, values: Values) -> Optional[float]:
    """How much better ``headroom.high`` is than ``headroom.low`` (difference of the means, positive where
    high is better); None without a headroom or while a side has no results."""
    h = claim.headroom
    if not h:
        return None
    low, high = _get(values, h["low"], h["metric"]), _get(values, h["high"], h["metric"])
    if not (low and high):
        return None
    sign = 1.0 if dict(claim.metrics)[h["metric"]] else -1.0
    return sign * (float(np.mean(high)) - float(np.mean(low)))


def judge(claim: Claim, values: Values) -> Optional[str]:
    """The claim's verdict on a table's ``values``; None: not measured (also while a ``best_of`` candidate
    has no results: the row judged against could still change, or while a headroom side has none);
    ``not testable`` where the headroom is below its minimum."""
    if _missing(claim, values):
        return None
    if claim.headroom:
        room = headroom(claim, values)
        if room is None:
            return None
        if room < claim.headroom["min"]:
            return "not testable"
    against, _ = _pick(claim, values)
    keys = [k for k, _ in claim.metrics] + ([claim.cost] if claim.cost else [])
    if not all(_get(values, side, k) for side in (claim.row, against) for k in keys):
        return None
    row = {k: _get(values, claim.row, k) for k in keys}
    other = {k: _get(values, against, k) for k in keys}
    return RULES[claim.rule](claim, row, other)


def verdict_text(v: Optional[str]) -> str:
    return {"confirmed": "**confirmed**", "not confirmed": "**not confirmed**", "not resolved": "**not resolved**",
            "not testable": "**not testable here**", None: "**not measured**"}[v]


def _gap(claim: Claim, values: Values, against: str) -> str:
    g = claim.gap
    r, a, t = (_get(values, x, g["metric"]) for x in (claim.row, against, g["to"]))
    if not (r and a and t) or np.mean(a) == np.mean(t):
        return ""
    return "; " + g["text"].format(pct=100 * (np.mean(a) - np.mean(r)) / (np.mean(a) - np.mean(t)))


def _headroom_note(claim: Claim, values: Values) -> List[str]:
    h = claim.headroom
    if not h:
        return []
    room = headroom(claim, values)
    what = f"headroom: {h['high']} better than {h['low']} in {h['metric']} by {{}} (needed: {h['min']:g})"
    return [what.format("? (no results yet)" if room is None else f"{room:.3g}")]


def render(claim: Claim, values: Values) -> Judged:
    """The claim judged on its table's ``values``, with its sentence."""
    v = judge(claim, values)
    against, have = _pick(claim, values)
    parts = []
    for lit, f, _ in _fields(claim.evidence):
        parts.append(lit)
        if f is None:
            continue
        if f == "against":
            parts.append(against)
        elif f == "gap":
            parts.append(_gap(claim, values, against))
        else:
            head, _, key = f.partition(".")
            if head == "others":
                parts.append("".join(f"; {g} {mean_std(_get(values, g, key))}" for g in have if g != against))
            else:
                label = {"row": claim.row, "against": against}.get(head, head)
                parts.append(mean_std(_get(values, label, key)))
    missing = _missing(claim, values)
    notes = ([f"no results yet: {', '.join(missing)}"] if missing else []) + _headroom_note(claim, values) \
        + ([claim.rule_text] if claim.rule_text else [])
    note = f" ({'; '.join(notes)})" if notes else ""
    line = f"*{claim.statement}* — {''.join(parts)}: {verdict_text(v)}{note}."
    return Judged(claim, v, against, line)


def render_lines(claims: Sequence[Claim], generator: Values, classifier: Values) -> List[str]:
    """The claims' numbered sentences, in the suite's order."""
    tables = {"generator": generator, "classifier": classifier}
    return [f"{i}. {render(c, tables[c.table]).line}" for i, c in enumerate(claims, 1)]


def render_section(claims: Sequence[Claim], generator: Values, classifier: Values,
                   protocols: Optional[Dict[str, Dict[str, str]]] = None) -> List[str]:
    """The report's claims: numbered in the suite's order; grouped under a heading per protocol when
    they are tested in more than one (``protocols``: name -> ``title``, ``description``)."""
    if not claims:
        return ["The suite declares no claims."]
    lines = render_lines(claims, generator, classifier)
    groups: Dict[str, List[str]] = {}
    for c, line in zip(claims, lines):
        groups.setdefault(c.protocol, []).append(line)
    if len(groups) == 1:
        return lines
    out: List[str] = []
    for name, group in groups.items():
        p = (protocols or {}).get(name) or {}
        out += [f"### {p.get('title') or (PROJECT_TITLE if name == PROJECT else f'Protocol {name}')}", ""]
        if p.get("description"):
            out += [str(p["description"]).strip(), ""]
        out += group + [""]
    return out[:-1]


__all__ = ["Claim", "CLAIM_KEYS", "PROJECT", "RULES", "register_rule", "parse_claims", "parse_claim", "judge", "headroom", "render",
           "render_lines", "render_section", "verdict_text", "Judged"]
