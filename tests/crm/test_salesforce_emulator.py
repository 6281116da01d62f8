"""The Salesforce emulator: real TLS with verification on, Salesforce's
error shapes, the SOQL subset, Collections and Bulk 2.0 limits; the
certificate helper; the emulator command."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceExpiredSession, SalesforceMalformedRequest

from martech.crm.connectors.salesforce import soql_datetime
from martech.crm.emulators.salesforce import parse_soql, SoqlError
from martech.crm.emulators.tls import ensure_certificate

ROOT = Path(__file__).resolve().parents[2]


def _client(salesforce, settings) -> Salesforce:
    session = requests.Session()
    session.verify = settings.MARTECH_CRM["SALESFORCE_CA_CERT"]
    session.trust_env = False
    return Salesforce(instance_url=settings.MARTECH_CRM["SALESFORCE_URL"], session_id="emulator-session",
                      session=session)


def test_tls_is_verified_against_the_generated_certificate(salesforce, settings, tmp_path):
    url = settings.MARTECH_CRM["SALESFORCE_URL"] + "/services/data/v59.0/limits"
    assert url.startswith("https://127.0.0.1:")
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ensure_certificate(tmp_path)[0])  # a different self-signed certificate
    with pytest.raises(requests.exceptions.SSLError):
        session.get(url, headers={"Authorization": "Bearer emulator-session"})
    session.verify = settings.MARTECH_CRM["SALESFORCE_CA_CERT"]
    answer = session.get(url, headers={"Authorization": "Bearer emulator-session"})
    assert answer.status_code == 200 and answer.json()["DailyApiRequests"]["Max"] == salesforce.daily_max
    assert answer.headers["Sforce-Limit-Info"] == "api-usage=1/100000"


def test_certificate_is_reused_and_key_is_private(tmp_path):
    cert, key = ensure_certificate(tmp_path)
    assert ensure_certificate(tmp_path) == (cert, key)
    assert cert.read_bytes() == ensure_certificate(tmp_path)[0].read_bytes()
    assert key.stat().st_mode & 0o077 == 0


def test_malformed_and_unknown_soql_refused_in_salesforce_shape(salesforce, settings):
    sf = _client(salesforce, settings)
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query("SELECT Id FROM Lead GROUP BY Email")
    assert exc.value.content[0]["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query("SELECT Nope FROM Lead")
    assert exc.value.content[0] == {"message": "No such column 'Nope' on entity 'Lead'.", "errorCode": "INVALID_FIELD"}
    with pytest.raises(SalesforceMalformedRequest):
        sf.query("SELECT Id FROM Lead WHERE Email LIKE 'a%'")


def test_soql_subset_filters_and_orders(salesforce, settings):
    sf = _client(salesforce, settings)
    t0 = dt.datetime(2026, 11, 30, 3, 0, 0, 250000, tzinfo=dt.timezone.utc)
    a = salesforce.put("Lead", {"Email": "a@example.org", "LastName": "A", "Company": "C"}, at=t0)
    b = salesforce.put("Lead", {"Email": "b@example.org", "LastName": "B", "Company": "C"}, at=t0)
    salesforce.put("Lead", {"Id": a["Id"], "IsConverted": True}, at=t0 + dt.timedelta(seconds=1))
    # Whole seconds, like Salesforce: the milliseconds are always 000.
    assert b["SystemModstamp"] == b["LastModifiedDate"] == "2026-11-30T03:00:00.000+0000"
    since = soql_datetime(b["CreatedDate"])
    assert soql_datetime("2026-11-30T03:00:00.000+0000") == "2026-11-30T03:00:00.000+00:00"
    result = sf.query(f"SELECT Id, Email FROM Lead WHERE SystemModstamp > {since} ORDER BY SystemModstamp, Id")
    assert [r["Email"] for r in result["records"]] == ["a@example.org"]  # only a changed after b was made
    result = sf.query(f"SELECT Id, Email FROM Lead WHERE SystemModstamp >= {since} ORDER BY SystemModstamp, Id")
    assert [r["Email"] for r in result["records"]] == ["b@example.org", "a@example.org"]  # >= takes the tie
    result = sf.query("SELECT Id FROM Lead WHERE IsConverted = false AND Email IN ('b@example.org', 'x@y.z')")
    assert [r["Id"] for r in result["records"]] == [b["Id"]]
    assert result["records"][0]["attributes"] == {"type": "Lead", "url": f"/services/data/v59.0/sobjects/Lead/{b['Id']}"}
    with pytest.raises(SoqlError):
        parse_soql("DELETE FROM Lead")


def test_collections_refuse_more_than_200_and_expired_session(salesforce, settings):
    sf = _client(salesforce, settings)
    body = {"allOrNone": False, "records": [{"attributes": {"type": "Lead"}, "Martech_Id__c": str(i),
                                             "LastName": "L", "Company": "C"} for i in range(201)]}
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.restful("composite/sobjects/Lead/Martech_Id__c", method="PATCH", json=body)
    assert exc.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    with pytest.raises(SalesforceMalformedRequest) as exc:  # a field Lead does not have: the whole call fails
        sf.restful("composite/sobjects/Lead/Martech_Id__c", method="PATCH",
                   json={"allOrNone": False, "records": [{"attributes": {"type": "Lead"}, "Martech_Id__c": "1",
                                                          "MailingCountry": "FR"}]})
    assert exc.value.content[0]["errorCode"] == "INVALID_FIELD"
    salesforce.expire_session()
    with pytest.raises(SalesforceExpiredSession) as exc:
        sf.query("SELECT Id FROM Lead")
    assert exc.value.content[0]["errorCode"] == "INVALID_SESSION_ID"


def test_campaign_member_resolves_references_by_external_id(salesforce, settings):
    sf = _client(salesforce, settings)
    sf.restful("composite/sobjects/Lead/Martech_Id__c", method="PATCH", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Lead"}, "Martech_Id__c": "7", "LastName": "L", "Company": "C"}]})
    answer = sf.restful("composite/sobjects/CampaignMember/Martech_Id__c", method="PATCH", json={
        "allOrNone": False, "records": [
            {"attributes": {"type": "CampaignMember"}, "Martech_Id__c": "1:7", "Lead": {"Martech_Id__c": "7"},
             "Campaign": {"Martech_Id__c": "1"}}]})
    assert answer[0]["success"] is False
    assert answer[0]["errors"][0]["message"] == ("Foreign key external ID: 1 not found for field Martech_Id__c "
                                                 "in entity Campaign")


def test_emulator_command_serves_tls(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "martech.settings",
           "MARTECH_CRM_SALESFORCE_EMULATOR_CERT_DIR": str(tmp_path), "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "crm_emulator", "--provider", "salesforce",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env=env)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("Salesforce emulator on https://127.0.0.1:")
        session = requests.Session()
        session.trust_env = False
        session.verify = str(tmp_path / "salesforce-emulator.pem")
        answer = session.get(line.rsplit(" ", 1)[1] + "/services/data/v59.0/query",
                             params={"q": "SELECT Id, Email FROM User"},
                             headers={"Authorization": "Bearer emulator-session"})
        assert answer.json()["records"][0]["Email"] == "sales.rep@example.com"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
