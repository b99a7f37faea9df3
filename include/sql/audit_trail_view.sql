{# The audit trail, one row per audited record: the per-row events (rows erased or pseudonymised
   with a smicer, purges); the records each verified archive batch holds (run, rule, policy version
   from the batch); and the records each erase transaction erased (the due candidates of its key
   range it did not leave in place; run, rule, table and policy version from their selection; the
   archive batch holding their copy, if any). Queried by table and key; no personal data. #}
CREATE VIEW {{ t.audit_trail }} AS
SELECT recorded_at, dag_id, run_id, rule, action, table_name, record_key, policy_version, archive_batch, as_of
  FROM {{ t.audit_events }}
UNION ALL
SELECT ab.verified_at, ab.dag_id, ab.run_id, ab.rule, 'archived', ar.table_name, ar.record_key, ab.policy_version,
       ab.batch_key, ab.as_of
  FROM {{ t.archived_records }} ar
  JOIN {{ t.archive_batches }} ab ON ab.batch_key = ar.batch_key
 WHERE ab.verified_at IS NOT NULL
UNION ALL
SELECT e.recorded_at, s.dag_id, s.run_id, s.rule, 'erased', s.table_name, c.record_key, s.policy_version,
       ar.batch_key, s.as_of
  FROM {{ t.erasures }} e
  JOIN {{ t.selections }} s ON s.id = e.selection_id
  JOIN {{ t.candidates }} c ON c.selection_id = e.selection_id AND c.record_key >= e.key_from AND c.record_key < e.key_to
  LEFT JOIN {{ t.archived_records }} ar ON ar.table_name = s.table_name AND ar.record_key = c.record_key
 WHERE e.recorded_at IS NOT NULL AND c.decision = 'due' AND c.state = 'pending'
