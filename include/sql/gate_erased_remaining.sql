{# How many rows are still present (or still linked to their smicer) although recorded as erased:
   due candidates of a done erasure's key range not left in place. Counted range by range, the
   table's rows in the range first: once erased, few remain there to look up among the candidates. #}
SELECT COALESCE(SUM((
         SELECT COUNT(*)
           FROM {{ table | q }} x
           JOIN {{ candidates }} c ON c.selection_id = e.selection_id AND c.record_key = x.{{ column | q }}
          WHERE x.{{ column | q }} >= e.key_from AND x.{{ column | q }} < e.key_to
            AND c.record_key >= e.key_from AND c.record_key < e.key_to
            AND c.decision = 'due' AND c.state = 'pending')), 0)
  FROM {{ erasures }} e
 WHERE e.selection_id = :selection_id AND e.recorded_at IS NOT NULL
