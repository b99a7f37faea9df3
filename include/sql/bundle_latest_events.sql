{# The latest event timestamps of a bundle member's rows, per owning smicer. #}
SELECT m.{{ link | q }} AS owner
{% for column in columns %}
     , MAX(m.{{ column | q }}) AS {{ column | q }}
{% endfor %}
  FROM {{ table | q }} m
 WHERE m.{{ link | q }} IN :owners
 GROUP BY m.{{ link | q }}
