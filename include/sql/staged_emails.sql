{# The addresses of a selection's notices to send: what a dry run checks for deliverability. #}
SELECT t.{{ email | q }} FROM {{ table | q }} t
  JOIN {{ candidates }} c ON c.record_key = t.{{ key | q }}
 WHERE c.selection_id = :selection_id AND c.decision = 'notify'
