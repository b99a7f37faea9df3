{# The first key of every `size` due candidates of a selection: where the key ranges of its erase
   transactions start. #}
SELECT x.record_key
  FROM (SELECT c.record_key, ROW_NUMBER() OVER (ORDER BY c.record_key) AS position
          FROM {{ candidates }} c
         WHERE c.selection_id = :selection_id AND c.decision = 'due') x
 WHERE (x.position - 1) % :size = 0
 ORDER BY x.record_key
