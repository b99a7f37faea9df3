{# Client deliverables survive their smicer: only the link to the person goes. #}
UPDATE {{ table | q }} SET {{ link | q }} = NULL WHERE {{ link | q }} IN :owners
