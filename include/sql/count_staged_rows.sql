{# The rows of a table whose `column` (its key, or a bundle member's link to its smicer) is a due
   candidate of a selection, of one retain_until if asked: what a dry run would archive or erase. #}
SELECT COUNT(*) FROM {{ table | q }} x
 WHERE x.{{ column | q }} IN (SELECT c.record_key FROM {{ candidates }} c
                               WHERE c.selection_id = :selection_id AND c.decision = 'due'
{% if by_retain_until %}
                                 AND c.retain_until = :retain_until
{% endif %}
                             )
