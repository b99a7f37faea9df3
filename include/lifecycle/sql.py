"""The statements of include/sql/: Jinja templates whose identifiers come only from the validated
policy (quoted by the database's own rules) and whose values are always bound parameters."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from sqlalchemy import Engine, TextClause, bindparam, text

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"


@cache
def _environment(dialect_name: str):
    import jinja2
    from sqlalchemy.dialects import registry

    dialect = registry.load(dialect_name)()
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(SQL_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    environment.filters["q"] = dialect.identifier_preparer.quote
    environment.globals["dialect"] = dialect_name
    return environment


def render(engine: Engine, name: str, **context) -> str:
    return _environment(engine.dialect.name).get_template(name).render(**context)


def statement(engine: Engine, name: str, *, expanding: tuple[str, ...] = (), **context) -> TextClause:
    """A bound statement from a template; `expanding` names the list parameters (IN :keys)."""
    clause = text(render(engine, name, **context))
    if expanding:
        clause = clause.bindparams(*(bindparam(param, expanding=True) for param in expanding))
    return clause
