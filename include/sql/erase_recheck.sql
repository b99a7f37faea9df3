{# The erase transaction's re-check of its key range (the records locked): the due candidates no
   longer erasable are left in place, marked skipped with the reason the database gives now: gone,
   no longer due (and why), or no verified archive copy where the rule archives. #}
{% import "_macros.sql" as m %}
{% set reason %}
CASE v.verdict WHEN 'due' THEN 'archive not verified' WHEN 'held' THEN 'no longer due: held'
     WHEN 'invalid' THEN 'no longer due: invalid' WHEN 'notify' THEN 'no longer due: notify'
     ELSE 'no longer due: not_due' END
{% endset %}
{% set unerasable %}
(v.verdict <> 'due' OR (v.retain_until IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM {{ archived_records }} ar JOIN {{ archive_batches }} ab ON ab.batch_key = ar.batch_key
     WHERE ar.table_name = :table_name AND ar.record_key = c.record_key AND ab.verified_at IS NOT NULL)))
{% endset %}
{% set in_range %}
c.selection_id = :selection_id AND c.decision = 'due' AND c.state = 'pending'
   AND c.record_key >= :key_from AND c.record_key < :key_to
{% endset %}
{% if gone %}
UPDATE {{ r.candidates }} SET state = 'skipped', reason = 'gone before erasure'
 WHERE record_key IN (SELECT c.record_key FROM {{ r.candidates }} c WHERE {{ in_range }}
                        AND NOT EXISTS (SELECT 1 FROM {{ r.table | q }} t WHERE t.{{ r.key | q }} = c.record_key))
   AND selection_id = :selection_id
{% elif dialect == 'mysql' %}
UPDATE {{ r.candidates }} c JOIN ({% include "decide.sql" %}) v ON v.record_key = c.record_key
   SET c.state = 'skipped', c.reason = {{ reason }}
 WHERE {{ in_range }} AND {{ unerasable }}
{% else %}
UPDATE {{ r.candidates }} AS c SET state = 'skipped', reason = {{ reason }}
  FROM ({% include "decide.sql" %}) v
 WHERE v.record_key = c.record_key AND {{ in_range }} AND {{ unerasable }}
{% endif %}
