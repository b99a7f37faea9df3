{# The trimmed, lower-cased emails held now (open restriction requests, active legal holds). #}
{% import "_macros.sql" as m %}
{{ m.held_emails(r.holds) }}
