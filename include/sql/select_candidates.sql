{# A rule's records worth a decision: a keyset page (after_key, page_size), or given keys
   (re-read, and locked where the database can, inside the erase transaction). #}
{% import "_macros.sql" as m %}
SELECT t.{{ r.key | q }} AS record_key
{% for ref in r.selected %}
     , {{ m.col(ref) }} AS {{ ref.label | q }}
{% endfor %}
     , {{ m.held(r.holds, r.key) }} AS held
  FROM {{ r.table | q }} t
{% if r.parent %}
  LEFT JOIN {{ r.parent.table | q }} p ON p.{{ r.parent.key | q }} = t.{{ r.parent.via | q }}
{% endif %}
{% if by_keys %}
 WHERE t.{{ r.key | q }} IN :keys
{% else %}
 WHERE t.{{ r.key | q }} > :after_key
{% endif %}
{% for f in r.filters %}
   AND {{ m.condition(f) }}
{% endfor %}
{% if not by_keys %}
   AND ({{ m.worth_a_look(r) }})
 ORDER BY t.{{ r.key | q }}
 LIMIT :page_size
{% endif %}
{% if lock and dialect == 'postgresql' %}
   FOR UPDATE OF t
{% elif lock and dialect == 'mysql' %}
   FOR UPDATE
{% endif %}
