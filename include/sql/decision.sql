{# A rule's decision on its records, as macros the statements of lifecycle's modules import (the
   reference is lifecycle.decide.decide()). Every identifier passes through `q`, every value is bound. #}

{# verdicts(r, scope): a rule's verdict on its records as of the run, decided by the database exactly as
   lifecycle.decide.decide() decides one record (the differential test holds them equal):
   record_key, verdict (due | held | invalid | notify | not_due), reason, anchor_epoch, due_epoch,
   retain_until. The anchors due under each window (intervals of instants) are bound from Python.
   `scope`: 'scan' every record worth a look (an index-friendly superset of those not 'not_due'),
   'all' every record of the rule, 'keys' the records given, 'staged' the pending due candidates of a
   selection in a key range. #}
{% macro verdicts(r, scope) -%}
SELECT v.record_key, v.verdict, v.anchor,
       CASE WHEN v.verdict = 'invalid' THEN COALESCE(v.problem, 'no anchor') WHEN v.verdict = 'held' THEN 'hold' END AS reason,
       CASE WHEN v.verdict IN ('due', 'held', 'notify') THEN {{ epoch('v.anchor') }} END AS anchor_epoch,
       CASE WHEN v.verdict IN ('due', 'held', 'notify') THEN {{ epoch('v.due_at') }} END AS due_epoch,
       CASE WHEN v.verdict = 'due' THEN v.retain_until END AS retain_until
  FROM (
SELECT d.record_key, d.anchor, d.problem,
       CASE
         WHEN d.problem IS NOT NULL THEN 'invalid'
         WHEN d.anchor IS NULL THEN '{{ 'invalid' if r.anchorless_is_invalid else 'not_due' }}'
         WHEN d.in_window = 0 THEN 'not_due'
         WHEN d.held = 1 THEN 'held'
{% if r.reactivation %}
         {# The reactivation cycle (lifecycle.reactivation): the ledger's latest notice of the smicer. #}
         WHEN n.state = 'pending' THEN 'not_due'
         WHEN n.id IS NULL OR n.state NOT IN ('sent', 'undeliverable') OR d.anchor > {{ ts('n.notice_as_of') }} THEN 'notify'
         WHEN {{ due_within(ts('n.notice_as_of'), 'grace', r.reactivation.intervals) }} = 0 THEN 'not_due'
{% endif %}
         ELSE 'due'
       END AS verdict,
{% if r.reactivation %}
       {# A smicer erased for not responding is due when the notice's grace period ends. #}
       CASE WHEN d.held = 0 AND n.state IN ('sent', 'undeliverable') AND d.anchor <= {{ ts('n.notice_as_of') }}
            THEN {{ plus(ts('n.notice_as_of'), r.reactivation.grace) }} ELSE d.due_at END AS due_at,
       CASE WHEN n.state IN ('sent', 'undeliverable') AND d.anchor <= {{ ts('n.notice_as_of') }}
            THEN d.retain_until END AS retain_until
{% else %}
       d.due_at, d.retain_until
{% endif %}
  FROM (
SELECT t.{{ r.key | q }} AS record_key,
       {{ problem(r) }} AS problem,
       CASE{% for w in r.windows %} WHEN {{ window_anchor(w) }} IS NOT NULL THEN {{ window_anchor(w) }}{% endfor %} END AS anchor,
       {{ in_window(r) }} AS in_window,
       CASE{% for w in r.windows %} WHEN {{ window_anchor(w) }} IS NOT NULL THEN {{ plus(window_anchor(w), w.period) }}{% endfor %} END AS due_at,
{% if r.archive and r.archive.source %}
       CASE WHEN {{ day(plus(ts(col(r.archive.source)), r.archive.period)) }} > :as_of_date
            THEN {{ day(plus(ts(col(r.archive.source)), r.archive.period)) }} END AS retain_until,
{% elif r.archive %}
       {{ day(':retain_until_from_as_of') }} AS retain_until,
{% else %}
       CAST(NULL AS DATE) AS retain_until,
{% endif %}
       {{ held(r.holds, r.key) }} AS held
  FROM {{ r.table | q }} t
{% if r.parent %}
  LEFT JOIN {{ r.parent.table | q }} p ON p.{{ r.parent.key | q }} = t.{{ r.parent.via | q }}
{% endif %}
 WHERE 1 = 1
{% for f in r.filters %}
   AND {{ condition(f) }}
{% endfor %}
{% if scope == 'keys' %}
   AND t.{{ r.key | q }} IN :keys
{% elif scope == 'staged' %}
   AND t.{{ r.key | q }} >= :key_from AND t.{{ r.key | q }} < :key_to
   AND t.{{ r.key | q }} IN ({{ staged_range(r.candidates) }})
{% elif scope == 'scan' and dialect != 'sqlite' %}
   AND ({{ worth_a_look(r) }})
{% endif %}
{{ computed_once() }}
{% if scope == 'staged' and dialect == 'postgresql' %}
   FOR UPDATE OF t {# the erase transaction's re-check: its records stay as decided until it commits #}
{% endif %}
       ) d
{% if r.reactivation %}
  LEFT JOIN {{ r.reactivation.notices }} n
    ON n.rule = :rule_id AND n.record_key = d.record_key
   AND n.cycle = (SELECT MAX(n2.cycle) FROM {{ r.reactivation.notices }} n2 WHERE n2.rule = :rule_id AND n2.record_key = d.record_key)
{% endif %}
{{ computed_once() }}
       ) v
{%- endmacro %}


{% macro col(ref) %}{{ ref.alias }}.{{ ref.column | q }}{% endmacro %}

{% macro condition(f) -%}
{% if f.op == 'subject' %}LOWER(TRIM({{ f.alias }}.{{ f.column | q }})) = :{{ f.param }}
{%- else %}{{ f.alias }}.{{ f.column | q }} {% if f.op == 'eq' %}= :{{ f.param }}{% elif f.op == 'null' %}IS NULL{% else %}IS NOT NULL{% endif %}
{%- endif %}
{%- endmacro %}

{# Trimmed, lower-cased emails under an open restriction request or an active legal hold. #}
{% macro held_emails(h) -%}
SELECT LOWER(TRIM(r.{{ h.restriction.email | q }})) FROM {{ h.restriction.table | q }} r
 WHERE {% for f in h.restriction.filters %}{% if not loop.first %} AND {% endif %}{{ condition(f) }}{% endfor %}

UNION
SELECT lh.email_normalized FROM {{ h.legal_holds }} lh
 WHERE lh.email_normalized IS NOT NULL AND lh.lifted_at IS NULL AND (lh.until IS NULL OR lh.until > :today)
{%- endmacro %}

{# The keys of `table` an active legal hold holds by key. #}
{% macro held_keys(h, table) -%}
SELECT lh.record_key AS held_key FROM {{ h.legal_holds }} lh
 WHERE lh.table_name = {{ table }} AND lh.lifted_at IS NULL AND (lh.until IS NULL OR lh.until > :today)
{%- endmacro %}

{# True when the record is held (lifecycle.decide.holds_context): by its email, by its key, or, in a
   smicer's bundle, because the smicer is held (by email or key) or any row of the bundle is held by
   key. Each test is an uncorrelated subquery, which the databases compute once per statement and
   look each row up in. #}
{% macro held_any(h, key) -%}
{% if not h.enabled %}1 = 0{% else %}
(
{% if h.email %}
  LOWER(TRIM(t.{{ h.email | q }})) IN ({{ held_emails(h) }}) OR
{% endif %}
{% if h.bundle %}
{# The smicers held, in one subquery (one lookup per row): by email and key (for a member's row; a
   root's own are tested above and below), or through any row of their bundle held by key. A derived
   table, as MariaDB reads no table its DELETE erases from but the one it has copied. #}
  t.{{ (h.bundle.link or key) | q }} IN (SELECT d.held_key FROM (
{% if h.bundle.link %}
{% if h.bundle.email %}
         SELECT o.{{ h.bundle.key | q }} AS held_key FROM {{ h.bundle.table | q }} o
          WHERE LOWER(TRIM(o.{{ h.bundle.email | q }})) IN ({{ held_emails(h) }})
         UNION
{% endif %}
         {{ held_keys(h, "'" ~ h.bundle.table ~ "'") }}
         UNION
{% endif %}
{% for member in h.bundle.members %}
         SELECT hm.{{ member.link | q }} AS held_key FROM {{ member.table | q }} hm
          WHERE hm.{{ member.key | q }} IN ({{ held_keys(h, "'" ~ member.table ~ "'") }})
{% if not loop.last %}
         UNION
{% endif %}
{% endfor %}
       ) d) OR
{% endif %}
  t.{{ key | q }} IN ({{ held_keys(h, ':hold_table') }})
)
{% endif %}
{%- endmacro %}

{# held_any as 1 or 0 (a test it cannot answer, NULL, does not hold). #}
{% macro held(h, key) -%}
CASE WHEN {{ held_any(h, key) }} THEN 1 ELSE 0 END
{%- endmacro %}

{# Why a record cannot be decided (a read timestamp after as-of, a broken chronology, no source for
   retain_until, on SQLite an unreadable value), or NULL. #}
{% macro problem(r) -%}
{% set undecidable %}
{% if dialect == 'sqlite' %}
         WHEN {% for ref in r.selected %}lifecycle_unreadable({{ col(ref) }}) = 1 OR {% endfor %}
              {% for b in r.bundle_events %}lifecycle_unreadable({{ member_latest(b, r.key) }}) = 1 OR {% endfor %}0 = 1
         THEN 'malformed timestamp'
{% endif %}
{% for ref in r.events %}
         WHEN {{ ts(col(ref)) }} > :as_of THEN 'timestamp after as-of: {{ ref.table }}.{{ ref.column }}'
{% endfor %}
{% for b in r.bundle_events %}
         WHEN {{ ts(member_latest(b, r.key)) }} > :as_of THEN 'bundle timestamp after as-of: {{ b.table }}.{{ b.column }}'
{% endfor %}
{% for earlier, later in r.chronology %}
         WHEN {{ ts('t.' ~ (later | q)) }} < {{ ts('t.' ~ (earlier | q)) }} THEN '{{ r.table }}.{{ later }} before {{ r.table }}.{{ earlier }}'
{% endfor %}
{% if r.archive and r.archive.source %}
         WHEN {{ col(r.archive.source) }} IS NULL THEN 'no retain_until source'
{% endif %}
{% endset %}
{% if undecidable | trim %}CASE
{{ undecidable }}       END{% else %}NULL{% endif %}
{%- endmacro %}

{# 1 when the record's anchor is due under its window, 0 when not, NULL when it has no anchor. #}
{% macro in_window(r) -%}
CASE{% for w in r.windows %} WHEN {{ window_anchor(w) }} IS NOT NULL
            THEN {{ due_within(window_anchor(w), w.name, w.intervals) }}{% endfor %} END
{%- endmacro %}

{# True when the verdict (verdicts, above) on the record `t` is 'due', read from its own row only: for a rule
   with no parent, no bundle and no reactivation. The erase statement's re-check: on a row another
   session changes meanwhile, the database evaluates it again on the row as it now stands. Written
   as plain comparisons, which the planner can estimate (the differential test holds it equal to
   the verdict). #}
{% macro still_due(r) -%}
{% for f in r.filters %}{{ condition(f) }} AND {% endfor %}
{% if dialect == 'sqlite' %}{% for ref in r.selected %}lifecycle_unreadable({{ col(ref) }}) = 0 AND {% endfor %}{% endif %}
{% for ref in r.events %}({{ ts(col(ref)) }} IS NULL OR {{ ts(col(ref)) }} <= :as_of) AND {% endfor %}
{% for earlier, later in r.chronology %}
({{ ts('t.' ~ (later | q)) }} IS NULL OR {{ ts('t.' ~ (earlier | q)) }} IS NULL OR {{ ts('t.' ~ (later | q)) }} >= {{ ts('t.' ~ (earlier | q)) }}) AND
{% endfor %}
{% if r.archive and r.archive.source %}{{ col(r.archive.source) }} IS NOT NULL AND {% endif %}
({% for w in r.windows %}{% if not loop.first %} OR {% endif %}({% for earlier in r.windows[:loop.index0] %}{{ window_anchor(earlier) }} IS NULL AND {% endfor %}{{ is_due(window_anchor(w), w.name, w.intervals) }}){% endfor %})
AND NOT COALESCE({{ held_any(r.holds, r.key) }}, 1 = 0)
{%- endmacro %}

{# An index-friendly superset of the records whose verdict is not 'not_due' (verdicts, above): due by a
   window (anchors up to its last due instant), or undecidable (a read timestamp after as-of, a broken chronology, no anchor). #}
{% macro worth_a_look(r) -%}
{% for w in r.windows %}
{% if not loop.first %} OR {% endif %}
{% if not w.columns %}
1 = 1
{% elif w.columns | length == 1 %}
{{ col(w.columns[0]) }} <= :{{ w.name }}_last
{% elif w.pick == 'first' %}
COALESCE({% for ref in w.columns %}{{ col(ref) }}{% if not loop.last %}, {% endif %}{% endfor %}) <= :{{ w.name }}_last
{% else %}
({% for ref in w.columns %}({{ col(ref) }} IS NULL OR {{ col(ref) }} <= :{{ w.name }}_last){% if not loop.last %} AND {% endif %}{% endfor %})
{% endif %}
{% endfor %}
{% for ref in r.events %}
 OR {{ col(ref) }} > :as_of
{% endfor %}
{% for b in r.bundle_events %}
 OR {{ member_latest(b, r.key) }} > :as_of
{% endfor %}
{% for earlier, later in r.chronology %}
 OR t.{{ later | q }} < t.{{ earlier | q }}
{% endfor %}
{% if r.anchorless_is_invalid %}
 OR ({% for ref in r.anchor_columns %}{{ col(ref) }} IS NULL{% if not loop.last %} AND {% endif %}{% endfor %})
{% endif %}
{% if r.archive and r.archive.source %}
 OR {{ col(r.archive.source) }} IS NULL
{% endif %}
{%- endmacro %}

{# 1 when an anchor is due: within the closed intervals `name` (lifecycle.periods.due_anchors),
   the first unbounded below. #}
{% macro due_within(expr, name, count) -%}
CASE WHEN {{ is_due(expr, name, count) }} THEN 1 ELSE 0 END
{%- endmacro %}

{% macro is_due(expr, name, count) -%}
({{ expr }} <= :{{ name }}_0_to{% for j in range(1, count) %} OR ({{ expr }} >= :{{ name }}_{{ j }}_from AND {{ expr }} <= :{{ name }}_{{ j }}_to){% endfor %})
{%- endmacro %}

{# Ends a derived table whose columns the query above reads several times: PostgreSQL would
   otherwise merge it and compute each of its expressions once per reference. #}
{% macro computed_once() %}{% if dialect == 'postgresql' %}OFFSET 0{% endif %}{% endmacro %}

{# An instant a rule reads: SQLite keeps text, read as canonical UTC text (lifecycle.sqlite_functions). #}
{% macro ts(expr) %}{% if dialect == 'sqlite' %}lifecycle_utc({{ expr }}){% else %}{{ expr }}{% endif %}{% endmacro %}

{# Calendar addition with month-end clipping, months before days, as relativedelta adds. #}
{% macro plus(expr, p) -%}
{% if p.months == 0 and p.days == 0 %}{{ expr }}
{% elif dialect == 'sqlite' %}lifecycle_plus_period({{ expr }}, '{{ p.text }}')
{% elif dialect == 'postgresql' %}({{ expr }} + INTERVAL '{{ p.months | int }} months {{ p.days | int }} days')
{% else %}DATE_ADD(DATE_ADD({{ expr }}, INTERVAL {{ p.months | int }} MONTH), INTERVAL {{ p.days | int }} DAY)
{% endif %}
{%- endmacro %}

{# Whole seconds since 1970-01-01 00:00 UTC, truncated as Python's int(timestamp()). PostgreSQL's
   date_part is a double, exact to the microsecond until 2106, and many times cheaper than EXTRACT's numeric. #}
{% macro epoch(expr) -%}
{% if dialect == 'sqlite' %}lifecycle_epoch({{ expr }})
{% elif dialect == 'postgresql' %}CAST(TRUNC(date_part('epoch', {{ expr }})) AS BIGINT)
{% else %}TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', {{ expr }})
{% endif %}
{%- endmacro %}

{# The run's as-of, typed as the instants it is compared with: a window without columns (a data
   subject's request) is anchored on it. #}
{% macro as_of_instant() -%}
{% if dialect == 'sqlite' %}:as_of{% elif dialect == 'postgresql' %}CAST(:as_of AS TIMESTAMP){% else %}CAST(:as_of AS DATETIME(6)){% endif %}
{%- endmacro %}

{# The UTC date of an instant. #}
{% macro day(expr) %}{% if dialect == 'sqlite' %}substr({{ expr }}, 1, 10){% else %}CAST({{ expr }} AS DATE){% endif %}{% endmacro %}

{# A window's anchor: the first present column, or the latest of them (each COALESCE rotation
   is non-null as soon as one column is, so their GREATEST is the latest present value). #}
{% macro window_anchor(w) -%}
{% if not w.columns %}{{ as_of_instant() }}
{% elif w.columns | length == 1 %}{{ ts(col(w.columns[0])) }}
{% elif w.pick == 'first' %}COALESCE({% for ref in w.columns %}{{ ts(col(ref)) }}{% if not loop.last %}, {% endif %}{% endfor %})
{% else %}{{ 'MAX' if dialect == 'sqlite' else 'GREATEST' }}({% for rotation in w.rotations %}COALESCE({% for ref in rotation %}{{ ts(col(ref)) }}{% if not loop.last %}, {% endif %}{% endfor %}){% if not loop.last %}, {% endif %}{% endfor %})
{% endif %}
{%- endmacro %}

{# The selection's due candidates of one erase transaction's key range, not left in place. #}
{% macro staged_range(candidates) -%}
SELECT sc.record_key FROM {{ candidates }} sc
 WHERE sc.selection_id = :selection_id AND sc.decision = 'due' AND sc.state = 'pending'
   AND sc.record_key >= :key_from AND sc.record_key < :key_to
{%- endmacro %}

{# The latest value of one event timestamp over a smicer's rows in a bundle member table. #}
{% macro member_latest(b, key) -%}
(SELECT MAX(bm.{{ b.column | q }}) FROM {{ b.table | q }} bm WHERE bm.{{ b.link | q }} = t.{{ key | q }})
{%- endmacro %}
