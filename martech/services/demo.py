"""Demo data: a seeded, realistic-looking marketing database for a new install.

``demo_seed`` is idempotent. Every generated row is keyed by a stable id
(account domain, lead email, event messageId, campaign UTM triple, form key),
and everything is drawn from random generators seeded by those ids, so:

- a second run with the same ``leads`` adds nothing and changes nothing;
- a run with a larger ``leads`` adds only the leads past the first N (lead
  ``i`` is the same person whatever N is) and their history.

Children without a natural key (stage transitions, consent records,
identities, events) are written only for leads this run created, so they are
never duplicated.

Rows are bulk-inserted for speed (2,000 leads and ~20,000 events in seconds
on SQLite). Bulk inserts send no signals: routing and nurture do not react to
demo data, just as they would not to an import that bypasses the services.
The stage history is written in exactly the shape ``lead_change_stage``
writes it (from, to, when, reason, source), so the timeline and funnel
reports read it like any other.
"""
from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from typing import Any

import phonenumbers
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from tqdm import tqdm

from martech.models import (
    Account,
    Campaign,
    ConsentChannel,
    ConsentRecord,
    Event,
    EventType,
    Form,
    Identity,
    Lead,
    LifecycleStage,
    StageTransition,
)
from martech.services.campaigns import UtmNormalizer, campaign_save
from martech.services.normalize import normalize_email

SEED = "martech-demo-v1"
# uuid5 namespace for demo messageIds: the same lead and step give the same id.
EVENT_NAMESPACE = uuid.UUID("6f1d7a52-3c39-4c59-9b6e-0d7f3c1f5a11")
ACCOUNT_COUNT = 150
HISTORY_DAYS = 180
BATCH = 1000

# --- Reference lists --------------------------------------------------------

_NAME_A = (
    "Acme Apex Arc Atlas Beacon Blue Bright Cedar Cobalt Crest Delta Echo Ember Evergreen Falcon Forge "
    "Granite Harbor Helix Horizon Iron Juniper Keystone Lumen Maple Meridian Nimbus Northwind Nova Orbit "
    "Pioneer Quartz Redwood Sable Summit Terra Vertex Willow Zenith"
).split()
_NAME_B = [
    ("Analytics", "Software"),
    ("Cloud", "Software"),
    ("Labs", "Software"),
    ("Systems", "Software"),
    ("Health", "Healthcare"),
    ("Medical", "Healthcare"),
    ("Bank", "Financial services"),
    ("Capital", "Financial services"),
    ("Logistics", "Logistics"),
    ("Freight", "Logistics"),
    ("Manufacturing", "Manufacturing"),
    ("Industries", "Manufacturing"),
    ("Retail", "Retail"),
    ("Commerce", "Retail"),
    ("Media", "Media"),
    ("Energy", "Energy"),
    ("Education", "Education"),
    ("Consulting", "Professional services"),
]
_TLDS = {"US": "com", "CA": "ca", "GB": "co.uk", "DE": "de", "FR": "fr", "NL": "nl", "AU": "com.au", "IN": "in",
         "SG": "sg", "BR": "com.br", "ES": "es", "SE": "se"}
# (country, weight, time zones)
_COUNTRIES = [
    ("US", 40, ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"]),
    ("GB", 12, ["Europe/London"]),
    ("DE", 9, ["Europe/Berlin"]),
    ("CA", 7, ["America/Toronto", "America/Vancouver"]),
    ("FR", 6, ["Europe/Paris"]),
    ("NL", 5, ["Europe/Amsterdam"]),
    ("AU", 5, ["Australia/Sydney", "Australia/Melbourne"]),
    ("IN", 5, ["Asia/Kolkata"]),
    ("SG", 3, ["Asia/Singapore"]),
    ("BR", 3, ["America/Sao_Paulo"]),
    ("ES", 3, ["Europe/Madrid"]),
    ("SE", 2, ["Europe/Stockholm"]),
]
_SIZES = [(5, 40, 25), (41, 200, 30), (201, 1000, 25), (1001, 5000, 13), (5001, 50000, 7)]
_FIRST = (
    "Ava Ben Chloe Daniel Elena Felix Grace Hugo Isla Jack Kira Liam Maya Noah Olivia Priya Quinn Rafael Sara "
    "Tom Uma Victor Wen Xavier Yara Zoe Aisha Bruno Carmen David Emma Farid Greta Hannah Ivan Julia Kenji Lena "
    "Marco Nina Omar Paula Ravi Sofia Tariq Ursula Vera William Yusuf Anna Lukas Mei Jonas Leah Mateo Ingrid"
).split()
_LAST = (
    "Smith Johnson Brown Garcia Miller Davis Martinez Lopez Wilson Anderson Thomas Taylor Moore Martin Lee "
    "Walker Hall Young King Wright Scott Green Baker Adams Nelson Carter Mitchell Roberts Turner Phillips "
    "Campbell Parker Evans Edwards Collins Stewart Morris Murphy Cook Rogers Morgan Cooper Peterson Bailey "
    "Reed Kelly Howard Kim Cox Ward Richardson Watson Brooks Wood James Bennett Gray Hughes Price Sanders "
    "Schmidt Muller Dubois Jansen Rossi Silva Sato Patel Singh Nguyen Andersson Fernandez"
).split()
_TITLES = [
    ("Marketing Manager", 14), ("Demand Generation Manager", 9), ("Marketing Operations Manager", 8),
    ("VP Marketing", 5), ("CMO", 2), ("Content Marketing Specialist", 6), ("Growth Lead", 5),
    ("Sales Development Representative", 6), ("Account Executive", 5), ("VP Sales", 3),
    ("Revenue Operations Manager", 5), ("Data Analyst", 6), ("Software Engineer", 7), ("CTO", 2),
    ("Product Manager", 6), ("Founder", 3), ("Student", 2), ("Consultant", 4),
]
_FREE_MAIL = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "proton.me"]

# Funnel: share of leads whose current stage is each key.
_FUNNEL = [("subscriber", 30), ("lead", 36), ("mql", 15), ("sql", 8), ("opportunity", 5), ("customer", 5),
           ("evangelist", 1)]
_PATH = ["subscriber", "lead", "mql", "sql", "opportunity", "customer", "evangelist"]
_STEP_REASON = {
    "lead": ("Downloaded gated content", "system"),
    "mql": ("Score reached the MQL threshold", "system"),
    "sql": ("Accepted by sales", "system"),
    "opportunity": ("Opportunity created in CRM", "crm:salesforce"),
    "customer": ("Opportunity closed won", "crm:salesforce"),
    "evangelist": ("Agreed to a case study", "system"),
}

# The demo campaigns: (name, source, medium, campaign key, starts days ago, runs days, budget).
# Names are raw UTM values as an ad platform would send them; campaign_save and
# the channel rules normalize and group them like real traffic.
CAMPAIGNS = [
    ("Google Search – Brand", "google", "cpc", "brand-search", 180, 180, "18000"),
    ("Google Search – Lead scoring keywords", "google", "cpc", "lead-scoring-kw", 150, 120, "24000"),
    ("Bing Search – Brand", "bing", "cpc", "brand-search-bing", 120, 90, "3000"),
    ("LinkedIn – Ops leaders ABM", "linkedin", "paid_social", "abm-ops-leaders", 170, 150, "30000"),
    ("LinkedIn – State of Marketing Ops ebook", "linkedin", "paid_social", "ebook-state-of-mops", 120, 75, "15000"),
    ("Facebook – Retargeting", "facebook", "paid_social", "retargeting-q", 90, 60, "6000"),
    ("Display – Retargeting", "google", "display", "gdn-retargeting", 160, 140, "9000"),
    ("Display – Industry publishers", "programmatic", "display", "publisher-takeover", 75, 30, "12000"),
    ("Newsletter (weekly)", "newsletter", "email", "weekly-newsletter", 180, 180, None),
    ("Email – Product launch", "hubspot", "email", "product-launch", 60, 14, None),
    ("Email – Webinar invite", "hubspot", "email", "webinar-invite-attribution", 100, 10, None),
    ("Webinar – Multi-touch attribution 101", "zoom", "webinar", "attribution-101", 100, 14, "2500"),
    ("Webinar – Routing rules that scale", "zoom", "webinar", "routing-rules-webinar", 45, 14, "2500"),
    ("MOPs Summit booth", "mops-summit", "event", "mops-summit-booth", 130, 3, "20000"),
    ("Partner referral programme", "partner-portal", "referral", "partner-program", 180, 180, "5000"),
    ("G2 reviews", "g2.com", "referral", "g2-profile", 180, 180, "4000"),
    ("Organic search", "google", "organic", "(organic)", 180, 180, None),
    ("Organic social", "linkedin", "social", "(social)", 180, 180, None),
    ("Direct traffic", "(direct)", "(none)", "(direct)", 180, 180, None),
]
# Which live campaign brings a lead back for a later session, by medium.
_RETURN_WEIGHTS = {"email": 6, "(none)": 4, "organic": 4, "cpc": 3, "paid_social": 3, "display": 2, "webinar": 2,
                   "event": 1, "referral": 1, "social": 1}
# How first touches spread over the campaigns above (same order).
_FIRST_TOUCH_WEIGHTS = [8, 8, 2, 8, 6, 3, 4, 3, 4, 2, 2, 3, 3, 3, 3, 3, 14, 4, 10]

def _field(name: str, lead_field: str, label: str, type: str = "text", required: bool = False, **extra: str) -> dict:
    return {"name": name, "label": label, "type": type, "lead_field": lead_field, "required": required, **extra}


FORMS = [
    {
        "key": "newsletter",
        "name": "Newsletter sign-up",
        "fields": [_field("email", "email", "Email", "email", True), _field("first_name", "first_name", "First name")],
        "defaults": {"lifecycle_stage": "subscriber"},
        "consent_field": "consent",
        "consent_text": "Send me the weekly marketing-ops newsletter. Unsubscribe any time.",
    },
    {
        "key": "ebook",
        "name": "Ebook: State of Marketing Ops",
        "fields": [
            _field("email", "email", "Work email", "email", True),
            _field("first_name", "first_name", "First name", required=True),
            _field("last_name", "last_name", "Last name"),
            _field("company", "company_name", "Company", required=True),
            _field("title", "job_title", "Job title"),
            _field("asset", "properties.last_asset", "Asset", "hidden", initial="state-of-marketing-ops",
                   policy="overwrite"),
        ],
        "defaults": {},
        "consent_field": "consent",
        "consent_text": "I agree to receive marketing email about related content and events.",
    },
    {
        "key": "demo-request",
        "name": "Request a demo",
        "fields": [
            _field("email", "email", "Work email", "email", True),
            _field("first_name", "first_name", "First name", required=True),
            _field("last_name", "last_name", "Last name", required=True),
            _field("company", "company_name", "Company", required=True),
            _field("title", "job_title", "Job title"),
            _field("phone", "phone", "Phone", "tel", help_text="With the country code, e.g. +49 30 1234567."),
            _field("country", "country", "Country", help_text="Two-letter code or name."),
            {**_field("team_size", "properties.team_size", "Team size", "select"),
             "choices": [["1-10", "1–10"], ["11-50", "11–50"], ["51-200", "51–200"], ["201+", "201 or more"]]},
            _field("message", "properties.demo_message", "What would you like to see?", "textarea", policy="overwrite"),
        ],
        "defaults": {},
        "consent_field": "consent",
        "consent_text": "I agree to be contacted about a demo and to receive marketing email.",
        # The event the "Demo requested" lifecycle rule (-> SQL, and so the
        # SQL handoff) listens to: with form_submitted, the demo's own demo
        # form never reached sales.
        "event_type": "demo_requested",
    },
]

_PAGES = ["/", "/product", "/pricing", "/blog/lead-scoring-guide", "/blog/utm-naming", "/blog/attribution-models",
          "/customers", "/integrations/salesforce", "/integrations/hubspot", "/docs/api", "/about", "/careers"]
_USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
]


@dataclass
class DemoResult:
    accounts: int = 0
    campaigns: int = 0
    forms: int = 0
    leads: int = 0
    stage_transitions: int = 0
    consent_records: int = 0
    identities: int = 0
    events: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _AccountSpec:
    name: str
    domain: str
    industry: str
    employee_count: int
    annual_revenue: Decimal
    country: str


@dataclass
class _LeadPlan:
    lead: Lead
    stage_key: str
    events: list[dict[str, Any]] = field(default_factory=list)


def _weighted(rng: random.Random, items: list[tuple[Any, int]]) -> Any:
    return rng.choices([i[0] for i in items], weights=[i[1] for i in items], k=1)[0]


def _account_specs() -> list[_AccountSpec]:
    rng = random.Random(f"{SEED}:accounts")
    combos = [(a, b) for a in _NAME_A for b in _NAME_B]
    rng.shuffle(combos)
    specs = []
    for a, (b, industry) in combos[:ACCOUNT_COUNT]:
        country = _weighted(rng, [(c[0], c[1]) for c in _COUNTRIES])
        low, high, _ = _weighted(rng, [((lo, hi, w), w) for lo, hi, w in _SIZES])
        employees = rng.randint(low, high)
        revenue = Decimal(employees * rng.randint(90, 400) * 1000).quantize(Decimal("1.00"))
        specs.append(
            _AccountSpec(
                name=f"{a} {b}",
                domain=f"{a}{b}.{_TLDS[country]}".lower(),
                industry=industry,
                employee_count=employees,
                annual_revenue=revenue,
                country=country,
            )
        )
    return specs


def _phone(rng: random.Random, country: str) -> str:
    example = phonenumbers.example_number_for_type(country, phonenumbers.PhoneNumberType.MOBILE)
    national = str(example.national_number)
    for _ in range(5):
        candidate = phonenumbers.parse(f"+{example.country_code}{national[:-4]}{rng.randrange(10000):04d}")
        if phonenumbers.is_valid_number(candidate):
            return phonenumbers.format_number(candidate, phonenumbers.PhoneNumberFormat.E164)
    return ""


def _aware(day: date, rng: random.Random) -> datetime:
    # Office-hours-ish UTC times, with a random second so ordering is strict enough.
    return datetime.combine(day, time(rng.randint(7, 20), rng.randint(0, 59), rng.randint(0, 59)), tzinfo=dt_timezone.utc)


def _anchor() -> date:
    """The day the demo history ends. Fixed at the first seeding (it is the
    end date of the always-on newsletter campaign), so a later run that adds
    leads places them on the same timeline as the first ones."""
    existing = (
        Campaign.objects.filter(utm_source="newsletter", utm_medium="email", utm_campaign="weekly-newsletter")
        .values_list("end_date", flat=True)
        .first()
    )
    return existing or timezone.now().date()


# --- Writers ------------------------------------------------------------------


def _seed_accounts(result: DemoResult) -> tuple[dict[str, Account], list[_AccountSpec]]:
    specs = _account_specs()
    domains = [s.domain for s in specs]
    existing = set(Account.objects.filter(domain__in=domains).values_list("domain", flat=True))
    anchor = _anchor()
    rng = random.Random(f"{SEED}:account-dates")
    new = [
        Account(
            name=s.name,
            domain=s.domain,
            industry=s.industry,
            employee_count=s.employee_count,
            annual_revenue=s.annual_revenue,
            country=s.country,
            created_at=_aware(anchor - timedelta(days=HISTORY_DAYS + rng.randint(1, 400)), rng),
        )
        for s in specs
        if s.domain not in existing
    ]
    Account.objects.bulk_create(new, batch_size=BATCH)
    result.accounts = len(new)
    by_domain = {a.domain: a for a in Account.objects.filter(domain__in=domains)}
    return by_domain, specs


def _campaign_triple(normalizer: UtmNormalizer, source: str, medium: str, key: str) -> tuple[str, str, str]:
    return (normalizer.normalize("source", source), normalizer.normalize("medium", medium),
            normalizer.normalize("campaign", key))


def demo_campaigns() -> QuerySet[Campaign]:
    """The campaigns of CAMPAIGNS, found by their normalized UTM keys as
    ``demo_seed`` finds them; campaigns ops made themselves are not among them
    (later stages' demo data, such as ad spend, goes on these only)."""
    normalizer = UtmNormalizer.load()
    match = Q(pk__in=[])
    for _name, source, medium, key, *_rest in CAMPAIGNS:
        s, m, c = _campaign_triple(normalizer, source, medium, key)
        match |= Q(utm_source=s, utm_medium=m, utm_campaign=c)
    return Campaign.objects.filter(match)


def _seed_campaigns(result: DemoResult, normalizer: UtmNormalizer, anchor: date) -> list[Campaign]:
    campaigns = []
    for name, source, medium, key, starts_ago, runs, budget in CAMPAIGNS:
        triple = _campaign_triple(normalizer, source, medium, key)
        found = Campaign.objects.filter(utm_source=triple[0], utm_medium=triple[1], utm_campaign=triple[2]).first()
        if found is None:
            start = anchor - timedelta(days=starts_ago)
            found = campaign_save(
                campaign=Campaign(
                    name=name,
                    utm_source=source,
                    utm_medium=medium,
                    utm_campaign=key,
                    channel=normalizer.channel(triple[0], triple[1]),
                    start_date=start,
                    end_date=min(start + timedelta(days=runs), anchor),
                    budget=Decimal(budget) if budget else None,
                )
            )
            result.campaigns += 1
        campaigns.append(found)
    return campaigns


def _seed_forms(result: DemoResult) -> dict[str, Form]:
    types = {t.name: t for t in EventType.objects.filter(
        name__in={spec.get("event_type", "form_submitted") for spec in FORMS})}
    forms = {}
    for spec in FORMS:
        form = Form.objects.filter(key=spec["key"]).first()
        if form is None:
            fields = {k: v for k, v in spec.items() if k != "event_type"}
            form = Form(event_type=types[spec.get("event_type", "form_submitted")], **fields)
            form.full_clean()
            form.save()
            result.forms += 1
        forms[form.key] = form
    return forms


def _lead_specs(count: int, accounts: list[_AccountSpec]) -> Iterable[tuple[int, random.Random, dict[str, Any]]]:
    """Lead ``i`` is drawn from its own generator, so it is the same person
    whatever ``count`` is. Emails are made unique in index order."""
    used: set[str] = set()
    for i in range(count):
        rng = random.Random(f"{SEED}:lead:{i}")
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        at_account = rng.random() < 0.8
        account = rng.choice(accounts) if at_account else None
        if account:
            domain, country = account.domain, account.country
        else:
            domain = rng.choice(_FREE_MAIL)
            country = _weighted(rng, [(c[0], c[1]) for c in _COUNTRIES])
        local = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}"]).lower()
        local = local if account else f"{local}{rng.randint(1, 99)}"
        email = f"{local}@{domain}"
        n = 2
        while email in used:
            email = f"{local}{n}@{domain}"
            n += 1
        used.add(email)
        zones = next(c[2] for c in _COUNTRIES if c[0] == country)
        yield i, rng, {
            "email": normalize_email(email),
            "first_name": first,
            "last_name": last,
            "job_title": _weighted(rng, _TITLES) if (account or rng.random() < 0.4) else "",
            "phone": _phone(rng, country) if rng.random() < 0.65 else "",
            "company_name": account.name if account else "",
            "account_domain": account.domain if account else None,
            "account_size": account.employee_count if account else 0,
            "country": country,
            "time_zone": rng.choice(zones),
        }


def _event(
    *,
    lead: Lead,
    index: int,
    step: int,
    name: str,
    at: datetime,
    campaign: Campaign,
    channel: str,
    anonymous_id: str,
    rng: random.Random,
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    page = rng.choice(_PAGES)
    kind = {"page_view": Event.Kind.PAGE, "form_submitted": Event.Kind.FORM}.get(name, Event.Kind.TRACK)
    props = properties if properties is not None else ({"url": f"https://www.example-martech.com{page}"}
                                                       if name == "page_view" else {})
    return {
        "client_event_id": str(uuid.uuid5(EVENT_NAMESPACE, f"{lead.email}:{step}")),
        "kind": kind,
        "event_type": name,
        "lead": lead,
        "anonymous_id": anonymous_id,
        "properties": props,
        "context": {
            "ip": f"198.51.100.{index % 250 + 1}",
            "userAgent": _USER_AGENTS[index % len(_USER_AGENTS)],
            "page": {"path": page},
        },
        "occurred_at": at,
        "received_at": at + timedelta(seconds=rng.randint(1, 90)),
        # Direct and organic visits carry the analytics tool's placeholders
        # ("(direct)" / "(none)"), which the channel rules group as such.
        "utm_source": campaign.utm_source,
        "utm_medium": campaign.utm_medium,
        "utm_campaign": campaign.utm_campaign,
        "utm_term": "marketing ops" if campaign.utm_medium == "cpc" else "",
        "utm_content": rng.choice(["", "", "variant-a", "variant-b"]) if campaign.budget else "",
        "channel": channel,
        "campaign": campaign,
    }


def _plan_journey(
    *, lead: Lead, index: int, rng: random.Random, stage_key: str, campaigns: list[Campaign], anchor: date,
    channel_of: dict[int, str],
) -> tuple[list[dict[str, Any]], datetime, str]:
    """Events for one lead, oldest first, and the form that converted them.
    The first event is the first touch; the lead is "created" at the form
    submission that follows it."""
    depth = _PATH.index(stage_key)
    first_campaign = rng.choices(campaigns, weights=_FIRST_TOUCH_WEIGHTS, k=1)[0]
    # Start inside the first-touch campaign's flight, in the last HISTORY_DAYS.
    start = max(first_campaign.start_date, anchor - timedelta(days=HISTORY_DAYS))
    end = max(start, min(first_campaign.end_date, anchor - timedelta(days=3 + depth * 7)))
    day = start + timedelta(days=rng.randint(0, max(0, (end - start).days)))
    at = _aware(day, rng)
    anonymous_id = str(uuid.uuid5(EVENT_NAMESPACE, f"anon:{lead.email}"))
    horizon = min(datetime.combine(anchor, time(23, 0), tzinfo=dt_timezone.utc), timezone.now())
    events: list[dict[str, Any]] = []
    step = 0

    def add(name: str, campaign: Campaign, when: datetime, properties: dict[str, Any] | None = None) -> None:
        nonlocal step
        if when >= horizon:  # history ends at the anchor day; nothing in the future
            return
        events.append(_event(lead=lead, index=index, step=step, name=name, at=when, campaign=campaign,
                             channel=channel_of[campaign.pk], anonymous_id=anonymous_id, rng=rng,
                             properties=properties))
        step += 1

    medium = first_campaign.utm_medium
    first_name = {"cpc": "ad_clicked", "paid_social": "ad_clicked", "display": "ad_clicked",
                  "email": "email_clicked", "webinar": "webinar_registered", "event": "event_attended"}.get(medium,
                                                                                                            "page_view")
    first_props = {"url": "https://www.example-martech.com/"} if first_name in ("email_clicked", "page_view") else None
    if first_name == "webinar_registered":
        first_props = {"webinar": first_campaign.utm_campaign}
    add(first_name, first_campaign, at, first_props)
    form_key = "newsletter" if stage_key == "subscriber" else rng.choice(["newsletter", "ebook", "ebook", "demo-request"])
    if depth >= _PATH.index("sql"):
        form_key = rng.choice(["ebook", "demo-request"])
    at += timedelta(minutes=rng.randint(1, 20))
    add("page_view", first_campaign, at)
    at += timedelta(minutes=rng.randint(1, 10))
    add("form_submitted", first_campaign, at, {"form": form_key})
    converted_at = at
    if form_key == "ebook":
        add("content_downloaded", first_campaign, at + timedelta(seconds=5), {"asset": "state-of-marketing-ops-2025"})
    if form_key == "demo-request":
        add("demo_requested", first_campaign, at + timedelta(seconds=5), {"form": form_key})

    # Later sessions: more of them the further down the funnel.
    sessions = rng.randint(*[(0, 3), (1, 5), (3, 9), (5, 12), (6, 14), (6, 16), (8, 18)][depth])
    for _ in range(sessions):
        at += timedelta(days=rng.randint(1, 12), hours=rng.randint(0, 8))
        if at >= horizon:
            break
        # Only campaigns in flight that day bring a returning visitor back.
        live = [c for c in campaigns if c.start_date <= at.date() <= c.end_date]
        campaign = rng.choices(live, weights=[_RETURN_WEIGHTS.get(c.utm_medium, 1) for c in live], k=1)[0]
        medium = campaign.utm_medium
        if medium == "email":
            add("email_opened", campaign, at, {"subject": campaign.name})
            add("email_clicked", campaign, at + timedelta(minutes=2), {"url": f"https://www.example-martech.com{rng.choice(_PAGES)}"})
        elif medium in ("cpc", "paid_social", "display"):
            add("ad_clicked", campaign, at, {"ad_group": campaign.utm_campaign})
            add("page_view", campaign, at + timedelta(seconds=20))
        elif medium == "webinar":
            add("webinar_registered", campaign, at, {"webinar": campaign.utm_campaign})
            if rng.random() < 0.55:
                add("webinar_attended", campaign, at + timedelta(days=2), {"webinar": campaign.utm_campaign})
        elif medium == "event":
            add("event_attended", campaign, at, {"event": campaign.utm_campaign})
        else:
            for k in range(rng.randint(1, 3)):
                add("page_view", campaign, at + timedelta(minutes=k * 3))
            if depth >= 2 and rng.random() < 0.3:
                add("pricing_viewed", campaign, at + timedelta(minutes=10), {"url": "https://www.example-martech.com/pricing"})
    if depth >= _PATH.index("sql") and form_key != "demo-request":
        at = min(at + timedelta(days=rng.randint(1, 5)), horizon - timedelta(hours=1))
        campaign = next(c for c in campaigns if c.utm_source == "(direct)")
        add("form_submitted", campaign, at, {"form": "demo-request"})
        add("demo_requested", campaign, at + timedelta(seconds=5), {"form": "demo-request"})
    events.sort(key=lambda e: e["occurred_at"])
    return events, converted_at, form_key


@transaction.atomic
def demo_seed(*, leads: int = 2000, progress: bool = False) -> DemoResult:
    """Create (or complete) the demo data set with ``leads`` leads. Idempotent;
    returns how many rows of each kind this call created."""
    if leads < 0:
        raise ValueError("leads must be >= 0")
    result = DemoResult()
    normalizer = UtmNormalizer.load()
    anchor = _anchor()
    accounts_by_domain, account_specs = _seed_accounts(result)
    campaigns = _seed_campaigns(result, normalizer, anchor)
    channel_of = {c.pk: normalizer.channel(c.utm_source, c.utm_medium) for c in campaigns}
    forms = _seed_forms(result)
    stages = {s.key: s for s in LifecycleStage.objects.all()}
    event_types = {t.name: t for t in EventType.objects.all()}

    specs = list(_lead_specs(leads, account_specs))
    existing: set[str] = set()
    for chunk_start in range(0, len(specs), BATCH):
        emails = [s[2]["email"] for s in specs[chunk_start:chunk_start + BATCH]]
        existing.update(Lead.objects.filter(email__in=emails).values_list("email", flat=True))
    todo = [s for s in specs if s[2]["email"] not in existing]

    bar = tqdm(total=len(todo), desc="Seeding demo leads", unit="lead", disable=not progress)
    for chunk_start in range(0, len(todo), BATCH // 2):
        chunk = todo[chunk_start:chunk_start + BATCH // 2]
        plans = []
        for index, rng, data in chunk:
            stage_key = _weighted(rng, _FUNNEL)
            account = accounts_by_domain.get(data["account_domain"]) if data["account_domain"] else None
            lead = Lead(
                email=data["email"], first_name=data["first_name"], last_name=data["last_name"],
                job_title=data["job_title"], phone=data["phone"], company_name=data["company_name"],
                account=account, country=data["country"], time_zone=data["time_zone"],
            )
            events, converted_at, form_key = _plan_journey(
                lead=lead, index=index, rng=rng, stage_key=stage_key, campaigns=campaigns, anchor=anchor,
                channel_of=channel_of,
            )
            first, last = events[0], events[-1]
            lead.created_at = converted_at
            lead.lifecycle_stage = stages[stage_key]
            lead.original_source = first["channel"]
            lead.first_touch_at = first["occurred_at"]
            lead.latest_touch_at = last["occurred_at"]
            for prefix, ev in (("first", first), ("latest", last)):
                for f in ("source", "medium", "campaign", "term", "content"):
                    setattr(lead, f"{prefix}_utm_{f}", ev[f"utm_{f}"])
            size = data["account_size"]
            lead.fit_score = (20 if size > 200 else 10 if size else 0) + (15 if "VP" in lead.job_title or lead.job_title in ("CMO", "CTO") else 5 if lead.job_title else 0)
            lead.engagement_score = min(60, 3 * len(events))
            lead.total_score = lead.fit_score + lead.engagement_score
            lead.properties = {"demo": True, "signup_form": form_key}
            plans.append((index, rng, lead, stage_key, events, converted_at, form_key))

        Lead.objects.bulk_create([p[2] for p in plans], batch_size=BATCH)
        # Re-read the ids: not every backend returns them from a bulk insert.
        ids = dict(Lead.objects.filter(email__in=[p[2].email for p in plans]).values_list("email", "id"))
        for p in plans:
            p[2].pk = ids[p[2].email]

        transitions, consents, identities, events = [], [], [], []
        for index, rng, lead, stage_key, lead_events, converted_at, form_key in plans:
            transitions.extend(_transitions(lead=lead, stage_key=stage_key, converted_at=converted_at,
                                            last_at=lead_events[-1]["occurred_at"], form_key=form_key,
                                            stages=stages, rng=rng))
            consents.extend(_consents(lead=lead, form=forms[form_key], converted_at=converted_at, index=index, rng=rng))
            identities.append(Identity(kind=Identity.Kind.ANONYMOUS, value=lead_events[0]["anonymous_id"], lead=lead,
                                       created_at=lead_events[0]["occurred_at"]))
            for e in lead_events:
                events.append(Event(**{**e, "event_type": event_types[e["event_type"]]}))
        StageTransition.objects.bulk_create(transitions, batch_size=BATCH)
        ConsentRecord.objects.bulk_create(consents, batch_size=BATCH)
        Identity.objects.bulk_create(identities, batch_size=BATCH, ignore_conflicts=True)
        # ignore_conflicts: the messageId is the event's identity; an id already
        # stored is the same event (the same rule capture follows).
        Event.objects.bulk_create(events, batch_size=BATCH, ignore_conflicts=True)
        result.leads += len(plans)
        result.stage_transitions += len(transitions)
        result.consent_records += len(consents)
        result.identities += len(identities)
        result.events += len(events)
        bar.update(len(chunk))
    bar.close()
    return result


def _transitions(
    *, lead: Lead, stage_key: str, converted_at: datetime, last_at: datetime, form_key: str,
    stages: dict[str, LifecycleStage], rng: random.Random,
) -> list[StageTransition]:
    """The history ``lead_change_stage`` would have written: created at the
    form's stage, then one step at a time up to the current stage."""
    start_key = "subscriber" if form_key == "newsletter" else "lead"
    target = _PATH.index(stage_key)
    if _PATH.index(start_key) > target:
        start_key = stage_key
    path = _PATH[_PATH.index(start_key):target + 1]
    out = [StageTransition(lead=lead, from_stage=None, to_stage=stages[path[0]], changed_at=converted_at,
                           reason="created", source=f"form:{form_key}")]
    span = max((last_at - converted_at).total_seconds(), 3600 * len(path))
    for n, key in enumerate(path[1:], start=1):
        at = converted_at + timedelta(seconds=span * n / len(path) + rng.randint(0, 600))
        reason, source = _STEP_REASON[key]
        out.append(StageTransition(lead=lead, from_stage=stages[path[n - 1]], to_stage=stages[key], changed_at=at,
                                   reason=reason, source=source))
    return out


def _consents(*, lead: Lead, form: Form, converted_at: datetime, index: int, rng: random.Random) -> list[ConsentRecord]:
    """Most leads granted email on their form; some withdrew later; some who
    gave a phone number also opted in to SMS."""
    ip = f"198.51.100.{index % 250 + 1}"
    out = []
    if rng.random() < 0.9:
        evidence = {"form": form.key, "ip": ip, "text": form.consent_text}
        out.append(ConsentRecord(lead=lead, channel=ConsentChannel.EMAIL, status=ConsentRecord.Status.GRANTED,
                                 source=f"form:{form.key}", evidence=evidence, recorded_at=converted_at))
        if rng.random() < 0.08:
            out.append(ConsentRecord(lead=lead, channel=ConsentChannel.EMAIL, status=ConsentRecord.Status.WITHDRAWN,
                                     source="unsubscribe", evidence={"link": "email footer"},
                                     recorded_at=min(converted_at + timedelta(days=rng.randint(3, 60)),
                                                     timezone.now())))
    if lead.phone and rng.random() < 0.25:
        out.append(ConsentRecord(lead=lead, channel=ConsentChannel.SMS, status=ConsentRecord.Status.GRANTED,
                                 source=f"form:{form.key}",
                                 evidence={"form": form.key, "ip": ip, "text": "Text me about my demo."},
                                 recorded_at=converted_at + timedelta(seconds=1)))
    return out
