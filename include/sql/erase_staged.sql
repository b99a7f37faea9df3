{# What one erase transaction does to the rows of a table whose `column` (the key, or a bundle
   member's link to its smicer) is a due candidate of its key range not left in place: `delete`
   them, or `pseudonymise` a bundle member's rows (the link to the smicer set to NULL). #}
{% import "_macros.sql" as m %}
{% if action == 'pseudonymise' %}
UPDATE {{ table | q }} SET {{ column | q }} = NULL
{% else %}
DELETE FROM {{ table | q }}
{% endif %}
 WHERE {{ column | q }} IN ({{ m.staged_range(candidates) }})
