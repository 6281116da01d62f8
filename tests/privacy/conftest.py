"""The CRM emulators and connections of tests/crm, for the erasure's CRM tests."""
from tests.crm.conftest import (  # noqa: F401
    connection,
    hubspot,
    no_sleep,
    salesforce,
    salesforce_cert,
    sf_connection,
    sf_no_sleep,
)
