{# What one erase transaction does to the rows of a table whose `column` (the key, or a bundle
   member's link to its smicer) is a due candidate of its key range not left in place: `delete`
   them, or `pseudonymise` a bundle member's rows (the link to the smicer set to NULL).
   `recheck`: the rule's own records, deleted only where still due (_macros.sql's still_due), the
   statement's own re-check in place of a locked one before it. #}
{% import "_macros.sql" as m %}
{% if action == 'pseudonymise' %}
UPDATE {{ table | q }} AS t SET {{ column | q }} = NULL
{% elif dialect == 'mysql' %}
DELETE t FROM {{ table | q }} t
{% else %}
DELETE FROM {{ table | q }} AS t
{% endif %}
 WHERE t.{{ column | q }} >= :key_from AND t.{{ column | q }} < :key_to
   AND t.{{ column | q }} IN ({{ m.staged_range(candidates) }})
{% if recheck %}
   AND {{ m.still_due(r) }}
{% endif %}
