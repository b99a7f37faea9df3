"""Statements as Jinja templates, each kept in the module that runs it, importing the macro libraries
of include/sql/ (decision.sql: the decision; archive.sql: an archive batch's rows). Identifiers come
only from the validated policy (quoted by the database's own rules); values are always bound parameters."""

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


@cache
def _template(dialect_name: str, source: str):
    return _environment(dialect_name).from_string(source)


def render(engine: Engine, source: str, **context) -> str:
    return _template(engine.dialect.name, source).render(**context)


def statement(engine: Engine, source: str, *, expanding: tuple[str, ...] = (), **context) -> TextClause:
    """A bound statement from a template's source; `expanding` names the list parameters (IN :keys)."""
    clause = text(render(engine, source, **context))
    if expanding:
        clause = clause.bindparams(*(bindparam(param, expanding=True) for param in expanding))
    return clause
