"""What each rule step reads and changes, as Airflow Assets, and where those are at run time, as
OpenLineage datasets.

A step task's inlets and outlets name the application tables it reads and changes and the evidence
archive it writes, so the UI's Assets view shows what each DAG touches. They are known when the DAG
file is parsed, from the policy alone (no Connection or Variable is read then), and stay the same
wherever the DAGs run:

- an application table is the Asset `smice_app.<table>`, URI `x-lifecycle-table://smice_app/<table>`:
  the table of the database behind the Airflow connection `smice_app`;
- a table's part of the evidence archive is `lifecycle_archive.<table>`, URI
  `x-lifecycle-archive://lifecycle_archive_uri/<table>`: the folder `<table>/` of the archive that the
  variable `lifecycle_archive_uri` names.

The `x-` scheme is Airflow's for URIs no provider interprets. OpenLineage names a dataset by where it
physically is (`postgres://host:port` and `database.schema.table`), which only the connection and the
variable tell, at run time: `dataset_of` gives it, and lineage_extractor.RuleStepExtractor hands the
provider those datasets for each step task. Names of tables and folders only: no row, no value.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from airflow.sdk import Asset

from lifecycle import pipeline
from lifecycle.app_database import APP_CONN_ID
from lifecycle.policy import Policy, Rule
from lifecycle_airflow.config import ARCHIVE_VARIABLE

TABLE_SCHEME = "x-lifecycle-table"
ARCHIVE_SCHEME = "x-lifecycle-archive"
ARCHIVE_ASSET_PREFIX = "lifecycle_archive"
# The application's tables are created without a schema: in PostgreSQL's default one.
POSTGRES_SCHEMA = "public"
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def table_asset(table: str) -> Asset:
    return Asset(name=f"{APP_CONN_ID}.{table}", uri=f"{TABLE_SCHEME}://{APP_CONN_ID}/{table}")


def archive_asset(table: str) -> Asset:
    return Asset(name=f"{ARCHIVE_ASSET_PREFIX}.{table}", uri=f"{ARCHIVE_SCHEME}://{ARCHIVE_VARIABLE}/{table}")


def is_lifecycle_asset(asset: object) -> bool:
    return isinstance(asset, Asset) and urlsplit(asset.uri).scheme in (TABLE_SCHEME, ARCHIVE_SCHEME)


def step_lineage(policy: Policy, rule: Rule, step: str) -> dict[str, list[Asset]]:
    """The inlets and outlets of a rule's step task. What a decision reads is named on the select step,
    not again on the erase, which decides again on the same tables."""
    match step:
        case pipeline.SELECT:
            inlets, outlets = _tables(decision_reads(policy, rule)), []
        case pipeline.ARCHIVE:
            inlets, outlets = _tables(archive_reads(policy, rule)), _archives(archived_tables(policy, rule))
        case pipeline.VERIFY_ARCHIVE:
            inlets, outlets = _archives(archived_tables(policy, rule)), []
        case pipeline.ERASE:
            inlets, outlets = [], _tables(erase_targets(policy, rule))
        case pipeline.VERIFY_ERASE:
            inlets, outlets = _tables(erase_targets(policy, rule)), []
        case pipeline.NOTIFY:
            inlets, outlets = _tables([rule.table]), []
        case pipeline.PURGE:
            inlets, outlets = [], _archives(_archived_by_any_rule(policy))
        case _:  # the gate and the approval read only the staged candidates, the pipeline's own tables
            inlets, outlets = [], []
    return {"inlets": inlets, "outlets": outlets}


def decision_reads(policy: Policy, rule: Rule) -> list[str]:
    """The tables a rule's decision reads (include/sql/decision.sql): its table, its parent's, the
    members of the bundle it erases with and, where holds apply, the restriction requests and the
    bundle its table belongs to."""
    tables = [rule.table]
    if rule.parent:
        tables.append(rule.parent.table)
    if rule.bundle:
        tables += [member.table for member in policy.bundles[rule.bundle].members]
    if rule.holds:
        tables.append(policy.restriction_holds.table)
        bundle = _bundle_of(policy, rule.table)
        if bundle:
            tables += [bundle.root, *(member.table for member in bundle.members)]
    return _unique(tables)


def archived_tables(policy: Policy, rule: Rule) -> list[str]:
    """The tables whose rows a rule archives (lifecycle.archiving.archive_sources): its own and the
    members of its bundle that are erased (not those pseudonymised)."""
    if not rule.archives:
        return []
    members = policy.bundles[rule.bundle].members if rule.bundle else ()
    return [rule.table, *(member.table for member in members if member.action == "erase")]


def archive_reads(policy: Policy, rule: Rule) -> list[str]:
    """The archived tables, and the owners whose email indexes a member's archived rows."""
    owners = []
    for table in archived_tables(policy, rule):
        membership = policy.bundle_membership(table)
        if not policy.tables[table].email and membership and policy.tables[membership[0].root].email:
            owners.append(membership[0].root)
    return _unique([*archived_tables(policy, rule), *owners])


def erase_targets(policy: Policy, rule: Rule) -> list[str]:
    """The tables a rule's erase changes (lifecycle.erasing): its bundle's members, erased or
    pseudonymised, and its own table."""
    members = policy.bundles[rule.bundle].members if rule.bundle else ()
    return [*(member.table for member in members), rule.table]


def dataset_of(asset: Asset, app_url: str, archive_uri: str) -> tuple[str, str]:
    """The OpenLineage (namespace, name) of a lifecycle Asset, following OpenLineage's dataset naming,
    given the application database's SQLAlchemy URL and the archive's location."""
    parsed = urlsplit(asset.uri)
    table = parsed.path.lstrip("/")
    if parsed.scheme == ARCHIVE_SCHEME:
        return _location_dataset(f"{archive_uri.rstrip('/')}/{table}")
    return _table_dataset(app_url, table)


def _table_dataset(app_url: str, table: str) -> tuple[str, str]:
    from sqlalchemy import make_url

    url = make_url(app_url)
    dialect = url.get_backend_name()
    if dialect == "sqlite":
        # OpenLineage's naming has no entry for SQLite: the database file's URL is the namespace.
        return f"sqlite://{url.database}", table
    address = f"{url.host}:{url.port or DEFAULT_PORTS[dialect]}"
    if dialect == "postgresql":
        return f"postgres://{address}", f"{url.database}.{POSTGRES_SCHEMA}.{table}"
    return f"mysql://{address}", f"{url.database}.{table}"


def _location_dataset(uri: str) -> tuple[str, str]:
    parsed = urlsplit(uri)
    if parsed.scheme == "s3":
        return f"s3://{parsed.netloc}", parsed.path.lstrip("/")
    return "file", parsed.path


def _tables(names: list[str]) -> list[Asset]:
    return [table_asset(name) for name in names]


def _archives(names: list[str]) -> list[Asset]:
    return [archive_asset(name) for name in names]


def _archived_by_any_rule(policy: Policy) -> list[str]:
    return _unique([table for rule in policy.rules() for table in archived_tables(policy, rule)])


def _bundle_of(policy: Policy, table: str):
    membership = policy.bundle_membership(table)
    if membership:
        return membership[0]
    return next((bundle for bundle in policy.bundles.values() if bundle.root == table), None)


def _unique(tables: list[str]) -> list[str]:
    return list(dict.fromkeys(tables))
