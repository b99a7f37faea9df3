{# Rows still present (or still linked to their smicer) although recorded as erased. #}
SELECT c.record_key
  FROM {{ candidates }} c
  JOIN {{ table | q }} x ON x.{{ column | q }} = c.record_key
 WHERE c.selection_id = {{ selection_id | int }} AND c.state = 'erased'
