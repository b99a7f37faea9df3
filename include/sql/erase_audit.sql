{# One audit event per row of a smicer's bundle one erase transaction erases or pseudonymises with
   them, written by the database before the rows go: run, rule, action, table, key, policy version,
   and the verified archive batch holding the row's copy, if any. (The erased records themselves
   are audited by their erasure: see audit_trail_view.sql.) #}
{% import "_macros.sql" as m %}
INSERT INTO {{ audit }} (recorded_at, dag_id, run_id, rule, action, table_name, record_key, policy_version, archive_batch, as_of)
SELECT :recorded_at, :dag_id, :run_id, :rule_id, :action, :table_name, x.{{ key | q }}, :policy_version, ar.batch_key, :as_of
  FROM {{ table | q }} x
  LEFT JOIN {{ archived_records }} ar ON ar.table_name = :table_name AND ar.record_key = x.{{ key | q }}
 WHERE x.{{ column | q }} IN ({{ m.staged_range(candidates) }})
