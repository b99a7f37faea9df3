SELECT {{ key | q }} AS record_key FROM {{ table | q }} WHERE {{ link | q }} IN :owners ORDER BY {{ key | q }}
