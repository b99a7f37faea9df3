{# Lock a rule's records for the caller's transaction (given keys, or the selection's pending due
   candidates in a key range), so that what is decided next stays true until it commits. #}
{% import "_macros.sql" as m %}
{% macro records(r, scope, what) -%}
SELECT {{ what }} FROM {{ r.table | q }} t
 WHERE t.{{ r.key | q }} IN {% if scope == 'keys' %}:keys{% else %}({{ m.staged_range(r.candidates) }}){% endif %}
{%- endmacro %}
{% if dialect == 'postgresql' %}
SELECT COUNT(*) FROM ({{ records(r, scope, 't.' ~ (r.key | q)) }} FOR UPDATE OF t) locked
{% elif dialect == 'mysql' %}
{{ records(r, scope, 'COUNT(*)') }} FOR UPDATE
{% else %}
{{ records(r, scope, 'COUNT(*)') }}
{% endif %}
