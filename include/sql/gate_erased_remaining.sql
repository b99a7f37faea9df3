{# How many rows are still present (or still linked to their smicer) although recorded as erased:
   due candidates of a done erasure's key range not left in place. #}
SELECT COUNT(*)
  FROM {{ erasures }} e
  JOIN {{ candidates }} c ON c.selection_id = e.selection_id AND c.record_key >= e.key_from AND c.record_key < e.key_to
  JOIN {{ table | q }} x ON x.{{ column | q }} = c.record_key
 WHERE e.selection_id = :selection_id AND e.recorded_at IS NOT NULL
   AND c.decision = 'due' AND c.state = 'pending'
