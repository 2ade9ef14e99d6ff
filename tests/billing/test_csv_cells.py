"""CSV exports open in spreadsheets: a name someone chose that starts like a formula is written as text (a leading
single quote, OWASP's advice against CSV injection), while our own figures, negative savings included, stay numbers."""
import csv
import io
from decimal import Decimal

import pytest

from billing.audit import Actor
from billing.audit import to_csv as audit_csv
from billing.reports import text_cell, to_csv

LARGE, SMALL = "ferryman-large", "ferryman-small"
NAMES = ['=HYPERLINK("http://evil.example","x")', "+SUM(A1)", "-2+3", "@cmd", "plain"]


@pytest.mark.parametrize("value, cell", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@A1", "'@A1"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("a=b", "a=b"), ("", ""), (-5, -5), (-0.5, -0.5), (None, None)])
def test_text_cells_that_start_like_a_formula_get_a_quote_and_numbers_are_left_alone(value, cell):
    assert text_cell(value) == cell


def test_report_csv_quotes_formula_names_and_keeps_negative_savings_numeric(billing):
    billing.set_price("=cheap()", input_micros_per_m=1_000_000, cached_input_micros_per_m=1_000_000,
                      output_micros_per_m=1_000_000)
    for i, name in enumerate(NAMES):
        tenant = billing.create_tenant(name)
        principal = billing.authenticate(billing.create_key(tenant["id"], "-key")[0])
        # priced against a cheaper baseline: a negative saving, which must stay a number
        billing.settle(billing.reserve(principal, f"r{i}", LARGE, 1000, 100), prompt_tokens=1000,
                       completion_tokens=100, route_group="g", baseline_model=SMALL)
        billing.settle(billing.reserve(principal, f"s{i}", "=cheap()", 1000, 100), prompt_tokens=1000,
                       completion_tokens=100, route="=cheap()")
    rows = billing.report(("tenant", "model", "route"))
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(parsed) == len(rows) == 2 * len(NAMES)
    for row, line in zip(rows, parsed):
        assert line["tenant"] == (row["tenant"] if row["tenant"] == "plain" else "'" + row["tenant"])
        assert line["model"] == ("'=cheap()" if row["model"] == "=cheap()" else row["model"])
        assert line["route"] == ("'=cheap()" if row["route"] == "=cheap()" else "")
        assert int(line["tenant_id"]) == row["tenant_id"]
        assert int(line["savings_micros"]) == row["savings_micros"]
        assert Decimal(line["savings_usd"]) * 1_000_000 == row["savings_micros"]
    assert any(row["savings_micros"] < 0 for row in rows)
    assert all(line["savings_usd"].startswith("-") for line in parsed if int(line["savings_micros"]) < 0)


def test_audit_csv_quotes_the_names_an_admin_typed(billing):
    actor = billing.acting(Actor("@evil", "admin"))
    actor.create_tenant("=2+5")
    actor.set_price("-model", input_micros_per_m=1, cached_input_micros_per_m=1, output_micros_per_m=1)
    lines = [line for line in csv.DictReader(io.StringIO(audit_csv(billing.audit(limit=None))))
             if line["actor"] == "'@evil"]
    assert [line["action"] for line in lines] == ["tenant.create", "price.set"]
    assert lines[0]["target"].startswith("tenant:") and lines[1]["target"] == "price:-model"
    assert '"name": "=2+5"' in lines[0]["after"]  # the JSON cell starts with '{': a spreadsheet keeps it as text
