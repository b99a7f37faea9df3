{% if dialect == 'postgresql' %}
SELECT pg_advisory_unlock(:key)
{% else %}
SELECT RELEASE_LOCK(:name)
{% endif %}
