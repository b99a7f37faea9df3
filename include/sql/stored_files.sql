{# The stored files (scans) of the records one erase transaction is about to erase. #}
{% import "_macros.sql" as m %}
SELECT {{ key | q }} AS record_key, {{ column | q }} AS location
  FROM {{ table | q }}
 WHERE {{ key | q }} IN ({{ m.staged_range(candidates) }})
