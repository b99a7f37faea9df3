{# The select step: stage the rule's decisions (all but 'not_due') for a selection in one
   statement; `retried`: a record an earlier try already acted on (emailed) keeps its row. #}
INSERT INTO {{ r.candidates }} (selection_id, record_key, decision, reason, anchor_epoch, due_epoch, retain_until, state)
SELECT :selection_id, x.record_key, x.verdict, x.reason, x.anchor_epoch, x.due_epoch, x.retain_until, 'pending'
  FROM ({% include "decide.sql" %}) x
 WHERE x.verdict <> 'not_due'
{% if retried %}
   AND NOT EXISTS (SELECT 1 FROM {{ r.candidates }} kept
                    WHERE kept.selection_id = :selection_id AND kept.record_key = x.record_key)
{% endif %}
