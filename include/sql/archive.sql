{# The rows of an archive batch (lifecycle.archiving): a source table's rows whose candidate (the row
   itself, or the smicer a bundle member's link names) is due and pending in the selection with the
   batch's retain_until, and in its key range, less those a recorded batch already holds (verified, or
   written and waiting for a run to verify it: a run archiving the same rows at the same time leaves them
   to it). `a` is the batch's context; a.bounds names the ends of its key range that are bound
   (:key_from, :key_to). #}

{% macro due(a) -%}
c.selection_id = :selection_id AND c.decision = 'due' AND c.state = 'pending' AND c.retain_until = :retain_until
{%- if 'key_from' in a.bounds %} AND c.record_key >= :key_from{% endif %}
{%- if 'key_to' in a.bounds %} AND c.record_key < :key_to{% endif %}
{%- endmacro %}

{% macro unarchived(a, key) -%}
NOT EXISTS (SELECT 1 FROM {{ a.archived_records }} ar
              JOIN {{ a.archive_batches }} ab ON ab.batch_key = ar.batch_key
             WHERE ar.table_name = :table_name AND ar.record_key = {{ key }})
{%- endmacro %}

{% macro batch_rows(a, with_owner=false) -%}
  FROM {{ a.table | q }} t
  JOIN {{ a.candidates }} c ON c.record_key = t.{{ a.match | q }}
{% if with_owner and a.owner %}
  LEFT JOIN {{ a.owner.table | q }} o ON o.{{ a.owner.key | q }} = t.{{ a.owner.link | q }}
{% endif %}
 WHERE {{ due(a) }}
   AND {{ unarchived(a, "t." ~ (a.key | q)) }}
{%- endmacro %}

{# lifecycle.rows.email_digest in SQL: the SHA-256 hex of the address stripped of what Python's
   str.strip() strips (bound as :strip, see lifecycle.rows.email_strip) and lower-cased; NULL when blank.
   LOWER follows the database's collation: it may differ from str.lower() on a few non-ASCII letters
   (a final Σ, İ; any under a C collation), never on ASCII ones. #}
{% macro email_digest(column) -%}
{% if dialect == 'postgresql' -%}
encode(sha256(convert_to(NULLIF(lower(btrim({{ column }}, :strip)), ''), 'UTF8')), 'hex')
{%- elif dialect == 'sqlite' -%}
lifecycle_email_digest({{ column }})
{%- else -%}
SHA2(CONVERT(NULLIF(LOWER(REGEXP_REPLACE({{ column }}, :strip, '')), '') USING utf8mb4), 256)
{%- endif %}
{%- endmacro %}

{# The digest of the email of each row's subject: its own email column, or its owning smicer's. #}
{% macro subject_digest(a) -%}
{% if a.owner %}{{ email_digest("o." ~ (a.owner.email | q)) }}{% elif a.email %}{{ email_digest("t." ~ (a.email | q)) }}{% else %}NULL{% endif %}
{%- endmacro %}
