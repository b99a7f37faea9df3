"""The policy file: every rule of the policy (docs/policy.md) as data, and clear errors for a broken file."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml
from sqlalchemy import text

from lifecycle.appschema import create_app_schema
from lifecycle.periods import add_period, parse_period
from lifecycle.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy, validate_against_database
from lifecycle.store import make_engine

POLICY_RULES = {
    "account-closed",
    "account-inactive",
    "connection-logs",
    "browsing-events",
    "client-contacts",
    "prospects",
    "newsletter",
    "info-requests",
    "applications-rejected",
    "applications-accepted",
    "identity-documents",
    "objections",
    "archive-expiry",
}


def test_the_shipped_policy_has_every_rule_of_policy_md_with_its_choices_marked():
    policy = load_policy()
    assert {rule.id for rule in policy.rules()} == POLICY_RULES
    assert {r.id for r in policy.rules() if r.choice} == {"account-inactive", "browsing-events"}
    assert policy.rule("account-inactive").grace_period == parse_period("P30D")
    assert policy.rule("applications-rejected").archive.source.column == "test_date"
    assert len(policy.version) == 64


def test_the_policy_version_is_the_files_content_hash(tmp_path):
    copy = tmp_path / "policy.yaml"
    copy.write_text(DEFAULT_POLICY_PATH.read_text() + "\n# a comment\n")
    assert load_policy(copy).version != load_policy().version


def test_calendar_periods_clip_at_month_end():
    assert add_period(datetime(2024, 2, 29, tzinfo=UTC), parse_period("P1Y")) == datetime(2025, 2, 28, tzinfo=UTC)
    assert add_period(datetime(2026, 1, 31, tzinfo=UTC), parse_period("P1M")) == datetime(2026, 2, 28, tzinfo=UTC)


def _broken(tmp_path, change) -> str:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    change(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _rule(data, rule_id):
    return next(r for p in data["purposes"] for r in p["rules"] if r["id"] == rule_id)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _rule(d, "prospects").update(period="3 years"), "rule 'prospects': field 'period'"),
        (lambda d: _rule(d, "prospects").update(action="shred"), "rule 'prospects': field 'action'"),
        (lambda d: _rule(d, "objections").update(table="objectionz"), "rule 'objections': field 'table'"),
        (lambda d: _rule(d, "newsletter").update(retention="P1Y"), "rule 'newsletter': field 'retention'"),
        (lambda d: _rule(d, "account-closed").pop("archive"), "rule 'account-closed': field 'archive'"),
        (
            lambda d: _rule(d, "prospects").update(anchor=["last_contact_at; DROP TABLE x"]),
            "rule 'prospects': field 'anchor'",
        ),
        (lambda d: _rule(d, "account-inactive").pop("grace_period"), "rule 'account-inactive': field 'grace_period'"),
        (lambda d: _rule(d, "account-inactive").pop("notice"), "rule 'account-inactive': field 'notice'"),
        (
            lambda d: _rule(d, "account-inactive")["notice"].update(languages=["french"]),
            "rule 'account-inactive': field 'notice.languages'",
        ),
    ],
)
def test_a_broken_policy_names_the_rule_and_the_field(tmp_path, change, message):
    with pytest.raises(PolicyError, match=message):
        load_policy(_broken(tmp_path, change))


def test_unreadable_or_invalid_yaml_is_named(tmp_path):
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("purposes: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)


def test_the_policy_is_checked_against_the_live_database(db_url, tmp_path):
    engine = make_engine(db_url)
    create_app_schema(engine)
    validate_against_database(load_policy(), engine)
    renamed = _broken(tmp_path, lambda d: _rule(d, "prospects").update(anchor=["last_contacted_at", "created_at"]))
    with pytest.raises(PolicyError, match=r"rule 'prospects': field 'anchor': column prospects.last_contacted_at"):
        validate_against_database(load_policy(renamed), engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE prospecting_objections"))
    with pytest.raises(PolicyError, match="table 'prospecting_objections'"):
        validate_against_database(load_policy(), engine)
    engine.dispose()
