{# The erase transaction's re-check of its key range, its records locked: the due candidates the
   database no longer finds due now are left in place (marked skipped: gone, or no longer due);
   then those still due without the verified archive copy their rule needs. What stays pending is
   what the transaction erases. #}
{% import "_macros.sql" as m %}
{% set in_range %}
selection_id = :selection_id AND decision = 'due' AND state = 'pending'
   AND record_key >= :key_from AND record_key < :key_to
{% endset %}
{% if check == 'due' %}
UPDATE {{ r.candidates }}
   SET state = 'skipped',
       reason = CASE WHEN EXISTS (SELECT 1 FROM {{ r.table | q }} t WHERE t.{{ r.key | q }} = {{ r.candidates }}.record_key)
                     THEN 'no longer due' ELSE 'gone before erasure' END
 WHERE {{ in_range }}
   AND record_key NOT IN (SELECT v.record_key FROM ({% include "decide.sql" %}) v WHERE v.verdict = 'due')
{% else %}
UPDATE {{ r.candidates }} SET state = 'skipped', reason = 'archive not verified'
 WHERE {{ in_range }} AND retain_until IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM {{ archived_records }} ar JOIN {{ archive_batches }} ab ON ab.batch_key = ar.batch_key
                    WHERE ar.table_name = :table_name AND ar.record_key = {{ r.candidates }}.record_key
                      AND ab.verified_at IS NOT NULL
                      {# the range again: the planner then reads these copies only #}
                      AND ar.record_key >= :key_from AND ar.record_key < :key_to)
{% endif %}
