{# Which batch holds each of its rows, with the digest of its subject's email (never the email); in
   key order, which makes the inserts into the index's primary key sequential. #}
{% import "archive_macros.sql" as m %}
INSERT INTO {{ a.archived_records }} (table_name, record_key, batch_key, subject_digest)
SELECT :table_name, t.{{ a.key | q }}, :batch_key, {{ m.subject_digest(a) }}
{{ m.batch_rows(a, with_owner=true) }}
 ORDER BY t.{{ a.key | q }}
