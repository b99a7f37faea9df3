{# Fragments shared by the statements; every identifier passes through `q`, every value is bound. #}

{% macro col(ref) %}{{ ref.alias }}.{{ ref.column | q }}{% endmacro %}

{% macro condition(f) -%}
{{ f.alias }}.{{ f.column | q }} {% if f.op == 'eq' %}= :{{ f.param }}{% elif f.op == 'null' %}IS NULL{% else %}IS NOT NULL{% endif %}
{%- endmacro %}

{# Trimmed, lower-cased emails under an open restriction request or an active legal hold. #}
{% macro held_emails(h) -%}
SELECT LOWER(TRIM(r.{{ h.restriction.email | q }})) FROM {{ h.restriction.table | q }} r
 WHERE {% for f in h.restriction.filters %}{% if not loop.first %} AND {% endif %}{{ condition(f) }}{% endfor %}

UNION
SELECT lh.email_normalized FROM {{ h.legal_holds }} lh
 WHERE lh.email_normalized IS NOT NULL AND lh.lifted_at IS NULL AND (lh.until IS NULL OR lh.until > :today)
{%- endmacro %}

{# 1 when the record, or the smicer owning it, is held. #}
{% macro held(h, key) -%}
{% if not h.enabled %}0{% else %}
CASE WHEN
{% if h.email %}
  LOWER(TRIM(t.{{ h.email | q }})) IN ({{ held_emails(h) }}) OR
{% endif %}
{% if h.owner %}
  EXISTS (SELECT 1 FROM {{ h.owner.table | q }} o
           WHERE o.{{ h.owner.key | q }} = t.{{ h.owner.link | q }}
             AND LOWER(TRIM(o.{{ h.owner.email | q }})) IN ({{ held_emails(h) }})) OR
{% endif %}
  EXISTS (SELECT 1 FROM {{ h.legal_holds }} lh
           WHERE lh.table_name = :hold_table AND lh.record_key = t.{{ key | q }}
             AND lh.lifted_at IS NULL AND (lh.until IS NULL OR lh.until > :today))
THEN 1 ELSE 0 END
{% endif %}
{%- endmacro %}

{# A superset of the due records (the exact calendar decision is taken in Python) and of the
   records that may be invalid: a read timestamp later than as-of, a broken chronology, no anchor. #}
{% macro worth_a_look(r) -%}
{% for w in r.windows %}
{% set i = loop.index0 %}
{% if not loop.first %} OR {% endif %}
{% if w.columns | length == 1 %}
{{ col(w.columns[0]) }} <= :cutoff_{{ i }}
{% elif w.pick == 'first' %}
COALESCE({% for ref in w.columns %}{{ col(ref) }}{% if not loop.last %}, {% endif %}{% endfor %}) <= :cutoff_{{ i }}
{% else %}
({% for ref in w.columns %}({{ col(ref) }} IS NULL OR {{ col(ref) }} <= :cutoff_{{ i }}){% if not loop.last %} AND {% endif %}{% endfor %})
{% endif %}
{% endfor %}
{% for ref in r.suspects %}
 OR {{ col(ref) }} > :suspect_after
{% endfor %}
{% for earlier, later in r.chronology %}
 OR t.{{ later | q }} < t.{{ earlier | q }}
{% endfor %}
{% if r.anchorless_is_invalid %}
 OR ({% for ref in r.anchor_columns %}{{ col(ref) }} IS NULL{% if not loop.last %} AND {% endif %}{% endfor %})
{% endif %}
{%- endmacro %}
