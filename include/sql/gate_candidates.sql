{# What the Great Expectations gate checks of the staged candidates one selection acts on (records
   due, notices to send), summed up by the database in one row: keys unique, every anchor and due
   instant present, every due instant on or after its anchor, the latest of each on or before as-of. #}
SELECT COUNT(*) AS candidates,
       COUNT(DISTINCT record_key) AS distinct_keys,
       COALESCE(SUM(CASE WHEN anchor_epoch IS NULL THEN 1 ELSE 0 END), 0) AS missing_anchors,
       COALESCE(SUM(CASE WHEN due_epoch IS NULL THEN 1 ELSE 0 END), 0) AS missing_due_instants,
       COALESCE(SUM(CASE WHEN due_epoch < anchor_epoch THEN 1 ELSE 0 END), 0) AS due_before_anchor,
       MAX(anchor_epoch) AS latest_anchor,
       MAX(due_epoch) AS latest_due
  FROM {{ candidates }}
 WHERE selection_id = :selection_id AND decision IN ('due', 'notify')
