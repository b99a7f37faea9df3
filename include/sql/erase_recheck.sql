{# The erase transaction's re-checks of its key range. 'due' (a rule whose erase statement cannot
   re-check for itself, see erasing.py), its records locked: the due candidates the database no longer
   finds due now are left in place (marked skipped: gone, or no longer due). 'gone' before the erase
   statement and 'kept' after it, for the others: candidates whose record was gone before, or is still
   there after. 'archive': those still due without the verified archive copy their rule needs. What
   stays pending is what the transaction erases. #}
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
{% elif check in ('gone', 'kept') %}
UPDATE {{ r.candidates }}
   SET state = 'skipped', reason = '{{ 'gone before erasure' if check == 'gone' else 'no longer due' }}'
 WHERE {{ in_range }}
   AND {{ 'NOT' if check == 'gone' }} EXISTS (SELECT 1 FROM {{ r.table | q }} t
                   WHERE t.{{ r.key | q }} = {{ r.candidates }}.record_key
                     AND t.{{ r.key | q }} >= :key_from AND t.{{ r.key | q }} < :key_to)
{% else %}
{% macro verified(table, key_expression, in_key_range=false) -%}
EXISTS (SELECT 1 FROM {{ archived_records }} ar JOIN {{ archive_batches }} ab ON ab.batch_key = ar.batch_key
         WHERE ar.table_name = '{{ table }}' AND ar.record_key = {{ key_expression }} AND ab.verified_at IS NOT NULL
{% if in_key_range %}
           AND ar.record_key >= :key_from AND ar.record_key < :key_to
{% endif %}
        )
{%- endmacro %}
{# A record, and each row of its bundle erased with it, needs its verified copy. #}
UPDATE {{ r.candidates }} SET state = 'skipped', reason = 'archive not verified'
 WHERE {{ in_range }} AND retain_until IS NOT NULL
   AND (NOT {{ verified(r.table, r.candidates ~ '.record_key', in_key_range=true) }}
{% for member in archived_members %}
        OR EXISTS (SELECT 1 FROM {{ member.table | q }} bm
                    WHERE bm.{{ member.link | q }} = {{ r.candidates }}.record_key
                      AND NOT {{ verified(member.table, 'bm.' ~ (member.key | q)) }})
{% endfor %}
       )
{% endif %}
