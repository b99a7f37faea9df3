{# The candidates a batch of the rule's own table must hold: one row each. #}
{% import "archive_macros.sql" as m %}
SELECT COUNT(*)
  FROM {{ a.candidates }} c
 WHERE {{ m.due() }}
   AND {{ m.unarchived(a, "c.record_key") }}
