"""The policy's documentation, rendered from the policy file for a DPO: each purpose and rule with its
records, window, action, evidence archive, holds, volume ceiling, seed text and choice, then the
tables, bundles and holds, and the readings taken where the seed is silent or ambiguous.

One document, two renderings: Markdown (docs/policy.md, written by `python -m lifecycle.policy_doc`)
and a self-contained HTML page (the Airflow UI serves it at /lifecycle/policy). Every purpose and rule
has a stable anchor: its id."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import quote

from lifecycle.policy import DEFAULT_POLICY_PATH, Policy, Purpose, Rule, Window, load_policy
from lifecycle.report_html import html_page

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = PROJECT_ROOT / "docs" / "policy.md"
# Where the Airflow UI serves the HTML page; relative, as the UI resolves links against its base URL.
UI_PATH = "lifecycle/policy"
ACTIONS = {
    "erase": "erase",
    "archive_erase": "archive, then erase",
    "reactivate": "reactivation email; without a response within the grace period, archive, then erase",
    "purge_archive": "purge the evidence archive's expired batches",
}
# The columns of a rule's summary, after the rule itself.
SUMMARY = ("records", "when due", "action", "evidence archive")
FILTERS = {"eq": "is", "null": "is empty", "not_null": "is set"}
MEMBER_ACTIONS = {"erase": "erased", "pseudonymise": "pseudonymised (kept, the link removed)"}


def ui_link(anchor: str) -> str:
    """The relative link to a section of the policy page in the Airflow UI."""
    return f"{UI_PATH}#{quote(anchor, safe='')}"


# The document: blocks of inline text, each inline a tuple of plain strings, Code and Link.
@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Link:
    label: str
    anchor: str
    code: bool = False


@dataclass(frozen=True)
class Heading:
    level: int
    anchor: str | None
    text: tuple


@dataclass(frozen=True)
class Paragraph:
    text: tuple


@dataclass(frozen=True)
class Quote:
    text: tuple
    source: tuple


@dataclass(frozen=True)
class Facts:
    items: tuple[tuple[str, tuple], ...]


@dataclass(frozen=True)
class Bullets:
    items: tuple[tuple, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[tuple, ...], ...]


def _prose(text: str) -> tuple:
    """Text from the policy file, its `code` spans as Code."""
    parts = re.split(r"`([^`]*)`", text)
    return tuple(Code(part) if i % 2 else part for i, part in enumerate(parts) if part)


def rule_summary_markdown(rule: Rule) -> tuple[str, ...]:
    """A rule's records, when due, action and evidence archive (SUMMARY), as Markdown without links."""
    return tuple(_markdown_inline(cell) for cell in _summary(rule))


def policy_markdown(policy: Policy) -> str:
    comment = (
        f"<!-- Generated from {_source_name(policy)} by `python -m lifecycle.policy_doc`: "
        "edit the policy file, then run it. -->"
    )
    return "\n\n".join([comment, *(_markdown_block(block) for block in _document(policy))]) + "\n"


def policy_html(policy: Policy) -> str:
    body = "\n".join(_html_block(block) for block in _document(policy))
    return html_page(f"Retention policy: {policy.name}", body, POLICY_CSS)


def _document(policy: Policy) -> list:
    return [
        *_introduction(policy),
        *_how_to_read(policy),
        *(block for purpose in policy.purposes for block in _purpose(policy, purpose)),
        *_data(policy),
        *_readings(policy),
    ]


def _introduction(policy: Policy) -> list:
    rule_count = len(policy.rules())
    return [
        Heading(1, None, (f"Retention policy: {policy.name}",)),
        Paragraph(
            (
                "Rendered from the policy file ",
                Code(_source_name(policy)),
                ", version ",
                Code(policy.version[:16]),
                " (the start of its SHA-256, as every run report names it). What this page says is what the "
                "retention runs apply: ",
                f"{len(policy.purposes)} purposes, one nightly DAG each, and {rule_count} rules.",
            )
        ),
        Paragraph(
            (
                "Seed policy: ",
                Code(policy.seed or "not named"),
                f", in force since {policy.in_force_since or 'a date not given'}. The seed text under each rule is "
                "the seed's own wording as the policy file quotes it; the seed document itself is not part of "
                "this repository. Where the seed is silent or ambiguous, the rule says which choice was made, and ",
                Link("Choices", "choices"),
                " and ",
                Link("Conservative readings", "conservative-readings"),
                " list them all.",
            )
        ),
        Table(
            ("rule", "purpose", *SUMMARY),
            tuple(
                ((Link(rule.id, rule.id, code=True),), (Link(purpose.title, purpose.id),), *_summary(rule))
                for purpose in policy.purposes
                for rule in purpose.rules
            ),
        ),
    ]


def _how_to_read(policy: Policy) -> list:
    expiry = [rule for rule in policy.rules() if rule.action == "purge_archive"]
    purged_by = (" by rule ", Link(expiry[0].id, expiry[0].id, code=True)) if expiry else ()
    return [
        Heading(2, "how-to-read", ("How to read a rule",)),
        Bullets(
            (
                (
                    "Every run decides as of its date (the run's logical date, UTC): for each record of the rule, "
                    "due, not due yet, held or invalid.",
                ),
                (
                    "When due: a record is due once its anchor plus the period is on or before the run's date. ",
                    Code("a, else b"),
                    ": the first of these columns that is set; ",
                    Code("latest of a, b"),
                    ": the later of them. A rule with several windows takes the first whose columns are set.",
                ),
                (
                    "Periods are ISO 8601 durations (P3Y, P3M, P30D; P0D: at once), added as calendar dates with "
                    "month ends clipped: 2024-02-29 + P1Y = 2025-02-28.",
                ),
                (
                    "Evidence archive: before the erasure, a copy is written and verified; it is kept until its "
                    "source date plus the retention, then purged",
                    *purged_by,
                    ". No record is erased without a verified copy when its rule archives.",
                ),
                (
                    "Holds: a record under a hold (",
                    Link("Holds", "holds"),
                    ") is kept and counted as held in the run's report.",
                ),
                (
                    "Invalid: a record with an event timestamp after the run's date, a timestamp that cannot be "
                    "read, or (unless the rule says otherwise) no anchor, is left alone and reported by table "
                    "and key.",
                ),
                (
                    "Volume ceiling: a run whose candidates for a rule exceed both figures waits for an operator's "
                    "approval before that rule acts.",
                ),
            )
        ),
    ]


def _purpose(policy: Policy, purpose: Purpose) -> list:
    reference = (purpose.seed_reference or "none given",)
    if policy.seed:
        reference += (" of ", Code(policy.seed))
    facts = [
        ("Legal basis", (purpose.legal_basis,)),
        ("Seed reference", reference),
        ("DAG", (Code(purpose.dag_id),)),
    ]
    if purpose.answer_deadlines:
        facts.append(("Answer deadlines", _answer_deadlines(purpose)))
    return [
        Heading(2, purpose.id, (purpose.title,)),
        Facts(tuple(facts)),
        *(block for rule in purpose.rules for block in _rule(policy, rule)),
    ]


def _answer_deadlines(purpose: Purpose) -> tuple:
    deadlines = purpose.answer_deadlines
    standing = _joined([Code(kind) for kind in deadlines.standing_kinds]) or ("none",)
    return (
        "the open requests of ",
        Code(deadlines.table),
        " (",
        Code(deadlines.status_column),
        " is ",
        Code(deadlines.open_value),
        f") are to be answered within {_period(deadlines.answer_within_text)} of ",
        Code(deadlines.received),
        f"; each run's report lists them, flags them from {_period(deadlines.warn_before_text)} before their "
        "deadline and alerts the operators when one is overdue. Kinds that stay open until lifted, listed "
        "without a deadline: ",
        *standing,
    )


def _rule(policy: Policy, rule: Rule) -> list:
    seed = (
        Quote((rule.seed_text,), ("seed text, as quoted in the policy file",))
        if rule.seed_text
        else Paragraph(("The policy file quotes no seed text for this rule.",))
    )
    facts = [("Records", _records(rule)), ("When due", _windows(rule))]
    if rule.grace_period_text:
        facts.append(("Grace period", (f"{_period(rule.grace_period_text)} after the reactivation email",)))
    facts.append(("Action", _action(rule)))
    if rule.table is None:
        facts.append(("Holds", ("a batch holding a held record is kept",)))
    else:
        facts += [
            ("Evidence archive", _archive(rule)),
            ("Holds", ("a hold keeps the record",) if rule.holds else ("never held",)),
            ("Volume ceiling", _ceiling(rule)),
        ]
    if rule.without_anchor == "not_due":
        facts.append(("Without an anchor", ("not due: kept, and not reported as invalid",)))
    if rule.stored_file:
        facts.append(("Stored file", ("the file named in ", Code(rule.stored_file), " is erased with the record")))
    if rule.notice:
        facts.append(("Reactivation email", _notice(policy, rule)))
    if rule.choice:
        facts.append(("Choice", (rule.choice,)))
    return [Heading(3, rule.id, ("Rule ", Code(rule.id))), seed, Facts(tuple(facts))]


def _summary(rule: Rule) -> tuple[tuple, ...]:
    return _records(rule), _windows(rule), (ACTIONS[rule.action],), _archive(rule)


def _records(rule: Rule) -> tuple:
    if rule.table is None:
        return ("the evidence archive's batches",)
    parts: list = [Code(rule.table)]
    if rule.parent:
        parts += [", read with its ", Code(rule.parent.table), " row (", Code(rule.parent.via), ")"]
    if rule.filters:
        parts += [" where ", *_joined([_condition(condition) for condition in rule.filters], " and ")]
    return tuple(parts)


def _condition(condition) -> tuple:
    value = (" ", Code(condition.value)) if condition.op == "eq" else ()
    return (_column(condition.column), f" {FILTERS[condition.op]}", *value)


def _windows(rule: Rule) -> tuple:
    if not rule.windows:
        return ("on the batch's ", Code("retain_until"), " date")
    return _joined([_window(window) for window in rule.windows], "; otherwise ")


def _window(window: Window) -> tuple:
    columns = [_column(ref) for ref in window.columns]
    if window.pick == "latest":
        anchor = ("the latest of ", *_joined(columns))
    else:
        anchor = _joined(columns, ", else ")
    if not window.period:
        return ("at ", *anchor, f" ({window.period_text})")
    return (f"{_period(window.period_text)} after ", *anchor)


def _action(rule: Rule) -> tuple:
    if not rule.bundle:
        return (ACTIONS[rule.action],)
    return (ACTIONS[rule.action], ", with the bundle ", Link(rule.bundle, f"bundle-{rule.bundle}", code=True))


def _archive(rule: Rule) -> tuple:
    if rule.archive is None:
        return ("none",)
    source = ("the erasure's date",) if rule.archive.source is None else (_column(rule.archive.source),)
    return (f"kept {_period(rule.archive.retain_for_text)} from ", *source)


def _ceiling(rule: Rule) -> tuple:
    ceiling = rule.volume_ceiling
    return (f"approval needed above {ceiling.count} records and {ceiling.share * 100:g} % of the table in one run",)


def _notice(policy: Policy, rule: Rule) -> tuple:
    notice = rule.notice
    return (
        "template ",
        Code(notice.template),
        " in ",
        *_joined([Code(language) for language in notice.languages]),
        " (the language in ",
        Code(notice.locale),
        ", else ",
        Code(notice.languages[0]),
        "), sent to ",
        Code(policy.tables[rule.table].email),
        "; its only personal data is the first name in ",
        Code(notice.first_name),
        "; contact address ",
        Code(notice.contact),
    )


def _data(policy: Policy) -> list:
    holds = policy.restriction_holds
    blocks = [
        Heading(2, "tables", ("Tables",)),
        Paragraph(
            (
                "The application tables the rules read. A record whose event timestamps, as a rule reads them, "
                "lie after a run's date is invalid for that run; so is one whose dates are out of order.",
            )
        ),
        Table(
            ("table", "key", "email", "event timestamps", "in order"),
            tuple(
                (
                    (Code(spec.name),),
                    (Code(spec.key),),
                    (Code(spec.email),) if spec.email else ("—",),
                    _joined([Code(column) for column in spec.event_timestamps]) or ("—",),
                    _joined([(Code(a), " before ", Code(b)) for a, b in spec.chronology]) or ("—",),
                )
                for spec in policy.tables.values()
            ),
        ),
        Heading(2, "bundles", ("Bundles",)),
        Paragraph(("Erasing a bundle's root record acts on the whole bundle, in the same transaction.",)),
    ]
    for bundle in policy.bundles.values():
        members = [
            (Code(member.table), " (by ", Code(member.link), "): ", MEMBER_ACTIONS[member.action])
            for member in bundle.members
        ]
        blocks += [
            Heading(3, f"bundle-{bundle.name}", ("Bundle ", Code(bundle.name))),
            Paragraph(("Root ", Code(bundle.root), "; members: ", *_joined(members, "; "), ".")),
        ]
    blocks += [
        Heading(2, "holds", ("Holds",)),
        Bullets(
            (
                (
                    "Restriction requests: a row of ",
                    Code(holds.table),
                    " where ",
                    *_joined([_condition(condition) for condition in holds.filters], " and "),
                    " holds every record carrying its ",
                    Code(holds.email),
                    " address (trimmed, case-insensitive), and the bundle of the record with that address.",
                ),
                (
                    "Legal holds: an operator's hold, by email or by table and key, holds the same way (the DAG ",
                    Code("legal_holds"),
                    ").",
                ),
                ("A rule marked never held ignores both.",),
            )
        ),
    ]
    return blocks


def _readings(policy: Policy) -> list:
    readings = policy.readings
    rule_choices = [(Link(rule.id, rule.id, code=True), ": ", rule.choice) for rule in policy.rules() if rule.choice]
    return [
        Heading(2, "choices", ("Choices",)),
        Paragraph(("Where the seed is silent, the choices made, first those of single rules:",)),
        Bullets(tuple(rule_choices) or (("none",),)),
        Paragraph(("and those spanning rules, from the policy file's ", Code("readings.choices"), ":")),
        Bullets(tuple(_prose(text) for text in readings["choices"]) or (("none",),)),
        Heading(2, "conservative-readings", ("Conservative readings",)),
        Paragraph(
            (
                "When in doubt, do not erase. The readings taken where the seed is ambiguous, from the policy file's ",
                Code("readings.conservative"),
                ":",
            )
        ),
        Bullets(tuple(_prose(text) for text in readings["conservative"]) or (("none",),)),
    ]


def _column(ref) -> Code:
    return Code(ref.column if ref.alias == "t" else f"{ref.table}.{ref.column}")


def _joined(items: list, separator: str = ", ") -> tuple:
    """Inline items (each a part or a tuple of parts) with the separator between them."""
    parts: list = []
    for i, item in enumerate(items):
        if i:
            parts.append(separator)
        parts.extend(item if isinstance(item, tuple) else (item,))
    return tuple(parts)


def _period(text: str) -> str:
    """An ISO period in words, then as written: "3 years (P3Y)"."""
    match = re.fullmatch(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?", text)
    units = ("year", "month", "week", "day")
    words = [f"{n} {unit}{'s' * (int(n) != 1)}" for n, unit in zip(match.groups(), units) if n] if match else []
    return f"{' '.join(words)} ({text})" if words else text


def _source_name(policy: Policy) -> str:
    """The policy file's path in the repository, else its name: never a machine's path."""
    try:
        return policy.path.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return policy.path.name


# Markdown
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#&~])")


def _markdown_block(block) -> str:
    match block:
        case Heading(level, anchor, text):
            target = f'<a id="{escape(anchor)}"></a>' if anchor else ""
            return f"{'#' * level} {target}{_markdown_inline(text)}"
        case Paragraph(text):
            return _markdown_inline(text)
        case Quote(text, source):
            return f"> {_markdown_inline(text)}\n>\n> — {_markdown_inline(source)}"
        case Facts(items):
            return "\n".join(f"- **{_markdown_text(label)}:** {_markdown_inline(text)}" for label, text in items)
        case Bullets(items):
            return "\n".join(f"- {_markdown_inline(text)}" for text in items)
        case Table(header, rows):
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_markdown_inline(cell) for cell in row) + " |" for row in rows]
            return "\n".join(lines)
    raise TypeError(block)


def _markdown_inline(parts: tuple) -> str:
    out = []
    for part in parts:
        match part:
            case Code(text):
                out.append(f"`{text}`")
            case Link(label, anchor, code):
                shown = f"`{label}`" if code else _markdown_text(label)
                out.append(f"[{shown}](#{quote(anchor, safe='')})")
            case _:
                out.append(_markdown_text(part))
    return "".join(out)


def _markdown_text(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", re.sub(r"\s+", " ", text))


# HTML
POLICY_CSS = """
p, ul, dl.meta, blockquote { max-width: 960px; }
td:first-child { white-space: nowrap; }
td code { overflow-wrap: normal; }
h2 { margin-top: 36px; }
h3 { font-size: 15px; margin-top: 24px; }
blockquote { margin: 8px 0; padding: 6px 14px; border-left: 3px solid var(--line); background: var(--soft); }
blockquote p { margin: 0; font-style: italic; }
blockquote footer { margin-top: 4px; color: var(--muted); font-size: 12.5px; }
ul { padding-left: 22px; }
li { margin: 3px 0; }
:target { scroll-margin-top: 12px; }
h2:target, h3:target { background: #fff4d6; }
"""


def _html_block(block) -> str:
    match block:
        case Heading(level, anchor, text):
            target = f' id="{escape(anchor)}"' if anchor else ""
            return f"<h{level}{target}>{_html_inline(text)}</h{level}>"
        case Paragraph(text):
            return f"<p>{_html_inline(text)}</p>"
        case Quote(text, source):
            return f"<blockquote><p>{_html_inline(text)}</p><footer>{_html_inline(source)}</footer></blockquote>"
        case Facts(items):
            rows = "".join(f"<dt>{escape(label)}</dt><dd>{_html_inline(text)}</dd>" for label, text in items)
            return f'<dl class="meta">{rows}</dl>'
        case Bullets(items):
            return "<ul>" + "".join(f"<li>{_html_inline(text)}</li>" for text in items) + "</ul>"
        case Table(header, rows):
            head = "".join(f"<th>{escape(name)}</th>" for name in header)
            body = "".join("<tr>" + "".join(f"<td>{_html_inline(cell)}</td>" for cell in row) + "</tr>" for row in rows)
            return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    raise TypeError(block)


def _html_inline(parts: tuple) -> str:
    out = []
    for part in parts:
        match part:
            case Code(text):
                out.append(f"<code>{escape(text)}</code>")
            case Link(label, anchor, code):
                shown = f"<code>{escape(label)}</code>" if code else escape(label)
                out.append(f'<a href="#{escape(quote(anchor, safe=""))}">{shown}</a>')
            case _:
                out.append(escape(part))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the policy's documentation, rendered from the policy file.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from the policy file")
    parser.add_argument("--output", type=Path, default=DOC_PATH, help="the Markdown file (default: docs/policy.md)")
    args = parser.parse_args(argv)
    rendered = policy_markdown(load_policy(DEFAULT_POLICY_PATH))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        if current != rendered:
            print(f"{args.output.name} is stale: run `python -m lifecycle.policy_doc`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
