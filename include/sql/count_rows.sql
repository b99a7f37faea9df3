SELECT COUNT(*) FROM {{ table | q }}
