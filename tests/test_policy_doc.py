"""The policy's documentation: docs/policy.md is the policy file rendered, every purpose and rule is in
it (Markdown and HTML) under its own anchor with its window, action, archive, seed text and choice,
and the retention DAGs' documentation links each rule to its section."""

from __future__ import annotations

import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest
import yaml

from lifecycle.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy
from lifecycle.policy_doc import ACTIONS, DOC_PATH, PROJECT_ROOT, main, policy_html, policy_markdown, ui_link
from lifecycle_airflow.factory import purpose_doc

POLICY = load_policy()
MARKDOWN = policy_markdown(POLICY)
HTML = policy_html(POLICY)


def _variant(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    change(data)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _section(document: str, anchor: str) -> str:
    """From the anchor to the next one (Markdown `<a id=…>`, HTML `<h3 id=…>`)."""
    start = document.index(f'id="{anchor}"')
    end = document.find('id="', start + 1)
    return document[start : end if end > 0 else None]


def _markdown_words(text: str) -> str:
    """The text a reader sees: link marks and escapes removed."""
    return re.sub(r"\[([^\]]*)\]\(#[^)]*\)", r"\1", text).replace("\\", "")


def _html_words(text: str) -> str:
    return unescape(re.sub(r"<[^>]+>", "", text))


def test_the_committed_docs_are_the_policy_file_rendered():
    assert DOC_PATH.read_text(encoding="utf-8") == MARKDOWN, "stale: run `python -m lifecycle.policy_doc`"
    check = subprocess.run(
        [sys.executable, "-m", "lifecycle.policy_doc", "--check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stderr


def test_check_fails_until_the_file_is_written_again(tmp_path, capsys):
    output = tmp_path / "policy.md"
    assert main(["--check", "--output", str(output)]) == 1
    assert main(["--output", str(output)]) == 0
    assert main(["--check", "--output", str(output)]) == 0
    output.write_text(output.read_text() + "An edit by hand.\n")
    assert main(["--check", "--output", str(output)]) == 1
    assert "stale" in capsys.readouterr().err


@pytest.mark.parametrize(("document", "words"), [(MARKDOWN, _markdown_words), (HTML, _html_words)])
def test_every_purpose_and_rule_is_documented_under_its_anchor(document, words):
    for purpose in POLICY.purposes:
        section = words(_section(document, purpose.id))
        for text in (purpose.title, purpose.legal_basis, purpose.seed_reference, purpose.dag_id):
            assert text in section, (purpose.id, text)
    for rule in POLICY.rules():
        section = words(_section(document, rule.id))
        assert ACTIONS[rule.action] in section, rule.id
        for window in rule.windows:
            assert f"({window.period_text})" in section, rule.id
        if rule.archive:
            assert f"({rule.archive.retain_for_text}) from" in section, rule.id
        assert (rule.seed_text or "The policy file quotes no seed text for this rule.") in section, rule.id
        if rule.choice:
            assert rule.choice in section, rule.id


@pytest.mark.parametrize(("document", "words"), [(MARKDOWN, _markdown_words), (HTML, _html_words)])
def test_the_choices_and_conservative_readings_of_the_policy_file_are_listed(document, words):
    readings = POLICY.readings
    choices, conservative = words(_section(document, "choices")), words(_section(document, "conservative-readings"))
    assert readings["choices"] and readings["conservative"]
    for text in readings["choices"]:
        assert text.replace("`", "") in choices.replace("`", "")
    for text in readings["conservative"]:
        assert text.replace("`", "") in conservative.replace("`", "")
    for rule in POLICY.rules():
        if rule.choice:
            assert f"{rule.id}: {rule.choice}" in choices.replace("`", "")


def test_anchors_are_unique_and_every_internal_link_has_its_target():
    html_ids = re.findall(r' id="([^"]+)"', HTML)
    markdown_ids = re.findall(r'<a id="([^"]+)"></a>', MARKDOWN)
    assert len(html_ids) == len(set(html_ids)) and set(html_ids) == set(markdown_ids)
    assert {p.id for p in POLICY.purposes} | {r.id for r in POLICY.rules()} <= set(html_ids)
    assert set(re.findall(r'href="#([^"]+)"', HTML)) <= set(html_ids)
    assert set(re.findall(r"\]\(#([^)]+)\)", MARKDOWN)) <= set(markdown_ids)


def test_the_html_page_is_self_contained():
    assert HTML.startswith("<!doctype html>") and "<style>" in HTML
    assert not re.search(r"<script|<link|<img|\ssrc=|href=\"(?!#)", HTML)


def test_no_machine_path_even_for_a_policy_outside_the_repository(tmp_path):
    outside = load_policy(_variant(tmp_path, lambda data: None))
    for document in (MARKDOWN, HTML, policy_markdown(outside), policy_html(outside)):
        for path in (PROJECT_ROOT, tmp_path, Path.home()):
            assert str(path) not in document
    assert "`include/policy/smice.yaml`" in MARKDOWN
    assert "`policy.yaml`" in policy_markdown(outside)


def test_text_from_the_policy_file_is_escaped(tmp_path):
    title = "<script>alert(1)</script> | *all* & [more](#x)"

    def hostile(data):
        data["purposes"][0]["title"] = title
        data["purposes"][0]["rules"][0]["seed_text"] = "<b>bold</b> | `tick`"

    policy = load_policy(_variant(tmp_path, hostile))
    page, markdown = policy_html(policy), policy_markdown(policy)
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>" not in page
    assert title in _html_words(page)
    assert "<script>" not in markdown and "<b>" not in markdown and "[more](#x)" not in markdown
    overview = [line for line in markdown.splitlines() if line.startswith("| [")]
    assert overview and all(len(re.findall(r"(?<!\\)\|", line)) == 7 for line in overview)  # six columns


def test_misspelt_readings_are_refused(tmp_path):
    with pytest.raises(PolicyError, match="readings"):
        load_policy(_variant(tmp_path, lambda data: data.update(readings={"choice": ["a typo"]})))


def test_each_retention_dag_links_its_purpose_and_rules_to_the_policy_page():
    for purpose in POLICY.purposes:
        doc = purpose_doc(POLICY, purpose)
        assert f"]({ui_link(purpose.id)})" in doc
        for rule in purpose.rules:
            assert f"[`{rule.id}`]({ui_link(rule.id)})" in doc
            assert f'id="{rule.id}"' in HTML
        assert "](#" not in doc  # a fragment alone would point into the DAG's own page
        assert "POLICY.md" not in doc
