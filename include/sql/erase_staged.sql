{# What one erase transaction does to the rows of a table, for the selection's pending due
   candidates of a key range (the re-check has marked the others): `delete` the rows whose
   `column` (the key, or a bundle member's link to its smicer) is one of them, or `pseudonymise`
   a bundle member's rows (the link to the smicer set to NULL). #}
{% import "_macros.sql" as m %}
{% if action == 'pseudonymise' %}
UPDATE {{ table | q }} SET {{ column | q }} = NULL
{% else %}
DELETE FROM {{ table | q }}
{% endif %}
 WHERE {{ column | q }} IN ({{ m.staged_range(candidates) }})
