{# The rows of an archive batch in key order, after :after (where a stream resumes). #}
{% import "archive_macros.sql" as m %}
SELECT {% for column in columns %}t.{{ column | q }}{% if not loop.last %}, {% endif %}{% endfor %}

{{ m.batch_rows(a) }}
   AND t.{{ a.key | q }} > :after
 ORDER BY t.{{ a.key | q }}
