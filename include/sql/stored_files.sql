SELECT {{ key | q }} AS record_key, {{ column | q }} AS location FROM {{ table | q }} WHERE {{ key | q }} IN :keys
