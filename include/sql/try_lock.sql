{# Take a named lock for this session if it is free; the database releases it when the session ends. #}
{% if dialect == 'postgresql' %}
SELECT pg_try_advisory_lock(:key)
{% else %}
SELECT GET_LOCK(:name, 0)
{% endif %}
