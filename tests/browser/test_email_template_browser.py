"""The email template editor in a real browser, as a Marketing Ops user (not
a superuser): pick a lead, see the preview follow unsaved edits in the
sandboxed iframe, and send a test to oneself."""
from __future__ import annotations

import pytest
from django.core import mail

from martech.services.leads import lead_upsert
from nurture.models import EmailTemplate
from nurture.services import email_template_save
from tests.browser.conftest import CHROMIUM
from tests.factories import UserFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def template(live_server):
    UserFactory(username="mops", email="mops@example.com", groups=["Marketing Ops"])
    lead_upsert(data={"email": "grace@acme.example", "first_name": "Grace", "company_name": "Acme"}, source="t")
    return email_template_save(template=EmailTemplate(
        name="Welcome", subject="Hi {{first_name|there}}", preheader="News for {{company_name|you}}",
        html_body="<p>Hello {{first_name|there}}</p>"
                  "<script>document.body.insertAdjacentHTML('beforeend', '<b id=ran>ran</b>')</script>"))


def test_preview_follows_edits_for_a_picked_lead_and_sends_a_test(live_server, template, browser_page, screenshots):
    page = browser_page
    mail.outbox = []
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "mops")
    page.fill("#id_password", "pw-Secret-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")

    page.goto(f"{live_server.url}/admin/nurture/emailtemplate/{template.pk}/change/")
    subject = page.locator("#preview-subject")
    page.wait_for_function("document.querySelector('#preview-subject').textContent === 'Hi there'")
    frame = page.frame_locator("#preview-html")
    assert frame.locator("p").inner_text() == "Hello there"

    # The lead picker: the admin's autocomplete (select2) over leads.
    page.click("#template-preview .select2-selection")
    page.fill(".select2-search__field", "grace")
    page.locator(".select2-results__option", has_text="grace@acme.example").click()
    page.wait_for_function("document.querySelector('#preview-subject').textContent === 'Hi Grace'")
    assert frame.locator("p").inner_text() == "Hello Grace"
    assert page.locator("#preview-preheader").inner_text() == "News for Acme"
    # The template's script did not run: the iframe is sandboxed.
    assert frame.locator("#ran").count() == 0

    # An unsaved edit re-renders; an error names the field.
    page.fill("#id_subject", "Welcome aboard, {{first_name}}")
    page.wait_for_function("document.querySelector('#preview-subject').textContent === 'Welcome aboard, Grace'")
    page.fill("#id_subject", "Welcome aboard, {{frist_name}}")
    page.locator("#preview-errors li").first.wait_for()
    assert "unknown merge field 'frist_name'" in page.locator("#preview-errors").inner_text()
    page.fill("#id_subject", "Welcome aboard, {{first_name}}")
    page.wait_for_function("document.querySelector('#preview-errors').hidden")
    page.screenshot(path=str(screenshots / "email_template_preview.png"), full_page=True)

    page.click("#send-test")
    page.wait_for_function("document.querySelector('#send-test-result').textContent.startsWith('Sent')")
    assert page.locator("#send-test-result").inner_text() == "Sent a test to mops@example.com."
    assert [m.subject for m in mail.outbox] == ["[Test] Welcome aboard, Grace"]
    assert EmailTemplate.objects.get().subject == "Hi {{first_name|there}}"  # previewing and testing saved nothing
    page.screenshot(path=str(screenshots / "email_template_test_sent.png"), full_page=True)
    assert subject.inner_text() == "Welcome aboard, Grace"
