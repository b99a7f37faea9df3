DELETE FROM {{ table | q }} WHERE {{ column | q }} IN :keys
