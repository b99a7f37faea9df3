{# The staged due candidates of one selection, for the Great Expectations gate (in the database). #}
SELECT record_key, anchor_epoch, due_epoch
  FROM {{ candidates }}
 WHERE selection_id = {{ selection_id | int }} AND decision = 'due'
