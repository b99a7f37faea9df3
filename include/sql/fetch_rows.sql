{# Whole rows to archive, matched on their key or on the link to their owner. #}
SELECT {% for column in columns %}{{ column | q }}{% if not loop.last %}, {% endif %}{% endfor %}

  FROM {{ table | q }}
 WHERE {{ match | q }} IN :keys
 ORDER BY {{ key | q }}
