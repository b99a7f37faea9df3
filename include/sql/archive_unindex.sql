{# A batch's rows indexed under a batch never verified (an interrupted run): indexed again by this one. #}
{% import "archive_macros.sql" as m %}
DELETE FROM {{ a.archived_records }}
 WHERE table_name = :table_name
   AND record_key IN (SELECT t.{{ a.key | q }}
{{ m.batch_rows(a) }})
