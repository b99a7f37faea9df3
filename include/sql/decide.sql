{# A rule's verdict on its records as of the run, decided by the database exactly as
   lifecycle.decide.decide() decides one record (the differential test holds them equal):
   record_key, verdict (due | held | invalid | notify | not_due), reason, anchor_epoch, due_epoch,
   retain_until. The anchors due under each window (intervals of instants) are bound from Python.
   `scope`: 'scan' every record worth a look (an index-friendly superset of those not 'not_due'),
   'all' every record of the rule, 'keys' the records given, 'staged' the pending due candidates of a
   selection in a key range. #}
{% import "_macros.sql" as m %}
SELECT v.record_key, v.verdict, v.anchor,
       CASE WHEN v.verdict = 'invalid' THEN COALESCE(v.problem, 'no anchor') WHEN v.verdict = 'held' THEN 'hold' END AS reason,
       CASE WHEN v.verdict IN ('due', 'held', 'notify') THEN {{ m.epoch('v.anchor') }} END AS anchor_epoch,
       CASE WHEN v.verdict IN ('due', 'held', 'notify') THEN {{ m.epoch('v.due_at') }} END AS due_epoch,
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
         WHEN n.id IS NULL OR n.state NOT IN ('sent', 'undeliverable') OR d.anchor > {{ m.ts('n.notice_as_of') }} THEN 'notify'
         WHEN {{ m.due_within(m.ts('n.notice_as_of'), 'grace', r.reactivation.intervals) }} = 0 THEN 'not_due'
{% endif %}
         ELSE 'due'
       END AS verdict,
{% if r.reactivation %}
       {# A smicer erased for not responding is due when the notice's grace period ends. #}
       CASE WHEN d.held = 0 AND n.state IN ('sent', 'undeliverable') AND d.anchor <= {{ m.ts('n.notice_as_of') }}
            THEN {{ m.plus(m.ts('n.notice_as_of'), r.reactivation.grace) }} ELSE d.due_at END AS due_at,
       CASE WHEN n.state IN ('sent', 'undeliverable') AND d.anchor <= {{ m.ts('n.notice_as_of') }}
            THEN d.retain_until END AS retain_until
{% else %}
       d.due_at, d.retain_until
{% endif %}
  FROM (
SELECT t.{{ r.key | q }} AS record_key,
       {{ m.problem(r) }} AS problem,
       CASE{% for w in r.windows %} WHEN {{ m.window_anchor(w) }} IS NOT NULL THEN {{ m.window_anchor(w) }}{% endfor %} END AS anchor,
       {{ m.in_window(r) }} AS in_window,
       CASE{% for w in r.windows %} WHEN {{ m.window_anchor(w) }} IS NOT NULL THEN {{ m.plus(m.window_anchor(w), w.period) }}{% endfor %} END AS due_at,
{% if r.archive and r.archive.source %}
       CASE WHEN {{ m.day(m.plus(m.ts(m.col(r.archive.source)), r.archive.period)) }} > :as_of_date
            THEN {{ m.day(m.plus(m.ts(m.col(r.archive.source)), r.archive.period)) }} END AS retain_until,
{% elif r.archive %}
       {{ m.day(':retain_until_from_as_of') }} AS retain_until,
{% else %}
       CAST(NULL AS DATE) AS retain_until,
{% endif %}
       {{ m.held(r.holds, r.key) }} AS held
  FROM {{ r.table | q }} t
{% if r.parent %}
  LEFT JOIN {{ r.parent.table | q }} p ON p.{{ r.parent.key | q }} = t.{{ r.parent.via | q }}
{% endif %}
 WHERE 1 = 1
{% for f in r.filters %}
   AND {{ m.condition(f) }}
{% endfor %}
{% if scope == 'keys' %}
   AND t.{{ r.key | q }} IN :keys
{% elif scope == 'staged' %}
   AND t.{{ r.key | q }} >= :key_from AND t.{{ r.key | q }} < :key_to
   AND t.{{ r.key | q }} IN ({{ m.staged_range(r.candidates) }})
{% elif scope == 'scan' and dialect != 'sqlite' %}
   AND ({{ m.worth_a_look(r) }})
{% endif %}
{{ m.computed_once() }}
{% if scope == 'staged' and dialect == 'postgresql' %}
   FOR UPDATE OF t {# the erase transaction's re-check: its records stay as decided until it commits #}
{% endif %}
       ) d
{% if r.reactivation %}
  LEFT JOIN {{ r.reactivation.notices }} n
    ON n.rule = :rule_id AND n.record_key = d.record_key
   AND n.cycle = (SELECT MAX(n2.cycle) FROM {{ r.reactivation.notices }} n2 WHERE n2.rule = :rule_id AND n2.record_key = d.record_key)
{% endif %}
{{ m.computed_once() }}
       ) v
