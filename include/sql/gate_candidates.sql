{# The staged candidates of one selection a rule acts on (records due, notices to send), for the
   Great Expectations gate (in the database). #}
SELECT record_key, anchor_epoch, due_epoch
  FROM {{ candidates }}
 WHERE selection_id = {{ selection_id | int }} AND decision IN ('due', 'notify')
