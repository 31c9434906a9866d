//! XDM B2B input: records of the platform's Experience Data Model mapped to the native events of SPEC §2.
//!
//! It owns the mapping (the table is `schemas/XDM.md`): which class a record is, which of its fields give the
//! identities, the event time and the attributes, and how a Marketo activity's `eventType` becomes an
//! activity kind. Records are read in the platform's XED form (`accountKey.sourceKey`, `_id`) or in the
//! repository's namespaced form (`xdm:accountKey`, `@id`, `marketo:URL`), normalized to XED first. XDM
//! records carry no tenant: the source's configuration names it. It shares the native decoder's edge rules
//! (size limit, UTF-8, duplicate keys at any depth, nesting, numbers, ids without control characters, the
//! accepted time range) and never panics. It does no I/O and knows nothing of routing: an activity carries
//! no account, so the engine resolves it through the person index as it does a native activity.

use crate::Id;
use crate::attrs::Attrs;
use crate::input::{
    DecodeLimits, EventBody, InputEvent, RejectReason, Rejection, checked_id, checked_ts, invalid, json_rejection,
    missing, record_text,
};
use crate::json::StrictValue;
use serde_json::{Map, Value};

/// The XDM classes Caravan maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdmClass {
    /// XDM Business Account.
    Account,
    /// XDM Individual Profile with the B2B person field groups (a Business Person).
    Person,
    /// XDM Business Account Person Relation.
    AccountPerson,
    /// XDM Business Opportunity.
    Opportunity,
    /// XDM ExperienceEvent (a Marketo activity).
    ExperienceEvent,
}

/// (path in the XED form, native attribute or property name).
type Fields = &'static [(&'static str, &'static str)];

/// Record attributes: (path in the XED form, native attribute name).
const ACCOUNT_ATTRIBUTES: &[(&str, &str)] = &[
    ("accountName", "name"),
    ("accountOrganization.industry", "industry"),
    ("accountOrganization.numberOfEmployees", "employees"),
    ("accountOrganization.annualRevenue.amount", "annual_revenue"),
    ("accountOrganization.annualRevenue.currencyCode", "annual_revenue_currency"),
    ("accountOrganization.website", "website"),
    ("accountOrganization.SICCode", "sic_code"),
    ("accountType", "type"),
    ("accountScore", "score"),
    ("accountSourceType", "source_type"),
    ("accountBillingAddress.city", "city"),
    ("accountBillingAddress.country", "country"),
    ("accountBillingAddress.countryCode", "country_code"),
    ("accountParentKey.sourceKey", "parent_account_id"),
    ("extSourceSystemAudit.externalKey.sourceKey", "crm_id"),
];

const PERSON_ATTRIBUTES: &[(&str, &str)] = &[
    ("person.name.fullName", "name"),
    ("person.name.firstName", "first_name"),
    ("person.name.lastName", "last_name"),
    ("workEmail.address", "email"),
    ("workPhone.number", "phone"),
    ("extendedWorkDetails.jobTitle", "job_title"),
    ("workAddress.country", "country"),
    ("b2b.personType", "person_type"),
    ("b2b.personStatus", "status"),
    ("b2b.personScore", "score"),
    ("b2b.personSource", "source"),
    ("b2b.isConverted", "is_converted"),
    ("b2b.isMarketingSuspended", "is_marketing_suspended"),
    ("b2b.isBlocked", "is_blocked"),
    ("b2b.companyName", "company_name"),
    ("consents.marketing.email.val", "email_consent"),
    ("extSourceSystemAudit.externalKey.sourceKey", "crm_id"),
];

const ACCOUNT_PERSON_ATTRIBUTES: &[(&str, &str)] =
    &[("personRole", "account_role"), ("isPrimary", "is_primary_contact"), ("isDirect", "is_direct_contact")];

const OPPORTUNITY_ATTRIBUTES: &[(&str, &str)] = &[
    ("opportunityName", "name"),
    ("opportunityStage", "stage"),
    ("opportunityType", "type"),
    ("opportunityAmount.amount", "amount"),
    ("opportunityAmount.currencyCode", "currency"),
    ("expectedRevenue.amount", "expected_revenue"),
    ("expectedCloseDate", "close_date"),
    ("isClosed", "is_closed"),
    ("isWon", "is_won"),
    ("probabilityPercentage", "probability"),
    ("forecastCategory", "forecast_category"),
    ("leadSource", "lead_source"),
    ("nextStep", "next_step"),
    ("campaignKey.sourceKey", "campaign_id"),
    ("extSourceSystemAudit.externalKey.sourceKey", "crm_id"),
];

/// Activity properties every event may carry.
const COMMON_PROPERTIES: &[(&str, &str)] = &[
    ("web.webPageDetails.URL", "url"),
    ("web.webPageDetails.name", "page_name"),
    ("web.webReferrer.URL", "referrer_url"),
];

/// Marketo activities: XDM `eventType` -> (activity kind, its own properties). MARKETO_ACTIVITIES.md in the
/// fixtures gives the event types and their fields.
const ACTIVITIES: &[(&str, &str, Fields)] = &[
    ("web.webpagedetails.pageViews", "web.visited", &[("web.webPageDetails.webPageID", "page_id")]),
    (
        "web.formFilledOut",
        "form.filled",
        &[("web.fillOutForm.webFormKey.sourceKey", "form_id"), ("web.fillOutForm.webFormName", "form_name")],
    ),
    (
        "web.webinteraction.linkClicks",
        "custom.link_clicked",
        &[("web.webInteraction.webInteractionKey.sourceKey", "link_id"), ("web.webInteraction.linkURL", "link_url")],
    ),
    ("directMarketing.emailSent", "email.sent", EMAIL),
    ("directMarketing.emailDelivered", "email.delivered", EMAIL),
    ("directMarketing.emailOpened", "email.opened", EMAIL),
    ("directMarketing.emailClicked", "email.clicked", EMAIL),
    ("directMarketing.emailBounced", "email.bounced", EMAIL_BOUNCE),
    ("directMarketing.emailBouncedSoft", "email.bounced", EMAIL_BOUNCE),
    ("directMarketing.emailUnsubscribed", "email.unsubscribed", EMAIL),
    ("leadOperation.newLead", "custom.new_lead", &[("leadOperation.newLead.leadSource", "lead_source")]),
    ("leadOperation.convertLead", "custom.lead_converted", &[("leadOperation.convertLead.convertedStatus", "status")]),
    (
        "leadOperation.scoreChanged",
        "custom.score_changed",
        &[
            ("leadOperation.changeScore.scoreAttributeName", "score_name"),
            ("leadOperation.changeScore.changeValue", "change"),
            ("leadOperation.changeScore.newValue", "new_value"),
            ("leadOperation.changeScore.oldValue", "old_value"),
        ],
    ),
    ("listOperation.addToList", "custom.added_to_list", &[("listOperations.listKey.sourceKey", "list_id")]),
    ("listOperation.removeFromList", "custom.removed_from_list", &[("listOperations.listKey.sourceKey", "list_id")]),
    ("leadOperation.mergeLeads", "custom.leads_merged", &[]),
    ("opportunityEvent.addToOpportunity", "custom.added_to_opportunity", OPPORTUNITY_EVENT),
    ("opportunityEvent.removeFromOpportunity", "custom.removed_from_opportunity", OPPORTUNITY_EVENT),
    ("opportunityEvent.opportunityUpdated", "custom.opportunity_updated", OPPORTUNITY_EVENT),
    (
        "leadOperation.interestingMoment",
        "custom.interesting_moment",
        &[
            ("leadOperation.interestingMoment.type", "moment_type"),
            ("leadOperation.interestingMoment.description", "description"),
        ],
    ),
    (
        "leadOperation.revenueStageChanged",
        "custom.revenue_stage_changed",
        &[
            ("leadOperation.changeRevenueStage.newStageName", "stage"),
            ("leadOperation.changeRevenueStage.previousStageName", "previous_stage"),
        ],
    ),
    ("leadOperation.statusInCampaignProgressionChanged", "custom.program_status_changed", PROGRESSION),
    (
        "leadOperation.callWebhook",
        "custom.webhook_called",
        &[("leadOperation.callWebhook.webhookName", "webhook_name")],
    ),
    (
        "leadOperation.addToCampaign",
        "custom.added_to_program",
        &[("leadOperation.addToCampaign.campaignKey.sourceKey", "program_id")],
    ),
    (
        "leadOperation.changeCampaignStream",
        "custom.nurture_track_changed",
        &[("leadOperation.changeCampaignStream.campaignKey.sourceKey", "program_id")],
    ),
    (
        "leadOperation.changeEngagementCampaignCadence",
        "custom.nurture_cadence_changed",
        &[("leadOperation.changeCampaignCadence.campaignKey.sourceKey", "program_id")],
    ),
];

const EMAIL: &[(&str, &str)] = &[
    ("directMarketing.mailingKey.sourceKey", "asset_id"),
    ("directMarketing.mailingName", "asset"),
    ("directMarketing.linkURL", "link_url"),
    ("directMarketing.testVariantName", "variant"),
    ("directMarketing.emailSent.mailingKey.sourceKey", "asset_id"),
    ("directMarketing.emailSent.mailingName", "asset"),
];

const EMAIL_BOUNCE: &[(&str, &str)] = &[
    ("directMarketing.mailingKey.sourceKey", "asset_id"),
    ("directMarketing.mailingName", "asset"),
    ("directMarketing.emailBouncedCode", "bounce_code"),
    ("directMarketing.emailBouncedDetails", "bounce_details"),
];

const OPPORTUNITY_EVENT: &[(&str, &str)] = &[
    ("opportunityEvent.opportunityKey.sourceKey", "opportunity_id"),
    ("opportunityEvent.role", "role"),
    ("opportunityEvent.isPrimary", "is_primary"),
];

const PROGRESSION: &[(&str, &str)] = &[
    ("leadOperation.campaignProgression.campaignKey.sourceKey", "program_id"),
    ("leadOperation.campaignProgression.newStatusName", "status"),
    ("leadOperation.campaignProgression.oldStatusName", "previous_status"),
    ("leadOperation.campaignProgression.isSuccessful", "is_successful"),
];

/// Program statuses that are native activity kinds (a Marketo event program's "Registered" and
/// "Attended"); other statuses stay `custom.program_status_changed`.
fn progression_kind(status: Option<&str>) -> Option<&'static str> {
    match status?.to_ascii_lowercase().as_str() {
        "registered" => Some("event.registered"),
        "attended" | "attended on-demand" => Some("event.attended"),
        _ => None,
    }
}

/// The class of a normalized record, from the keys it has.
///
/// # Errors
/// `unknown_type` for a record of no mapped class.
pub fn classify(rec: &Map<String, Value>) -> Result<XdmClass, Rejection> {
    let has = |path: &str| !matches!(get(rec, path), None | Some(Value::Null));
    Ok(if has("eventType") {
        XdmClass::ExperienceEvent
    } else if has("accountPersonKey") {
        XdmClass::AccountPerson
    } else if has("opportunityPersonKey") || has("campaignMemberKey") || has("marketingListMemberKey") {
        return Err(Rejection {
            reason: RejectReason::UnknownType,
            detail: "XDM relation records other than Business Account Person are not mapped".into(),
        });
    } else if has("opportunityKey") {
        XdmClass::Opportunity
    } else if has("b2b.personKey") {
        XdmClass::Person
    } else if has("accountKey") {
        XdmClass::Account
    } else {
        return Err(Rejection {
            reason: RejectReason::UnknownType,
            detail: "not a mapped XDM B2B record: none of `eventType`, `accountPersonKey`, `opportunityKey`, \
                     `b2b.personKey` or `accountKey` is set"
                .into(),
        });
    })
}

/// The value at a dotted path.
fn get<'a>(rec: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut at = rec.get(parts.next()?)?;
    for p in parts {
        at = at.as_object()?.get(p)?;
    }
    Some(at)
}

/// A string at a dotted path, checked as an id; `None` when absent or null.
fn opt_key(rec: &Map<String, Value>, path: &str) -> Result<Option<Id>, Rejection> {
    match get(rec, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => checked_id(path, s).map(Some),
        Some(_) => Err(invalid(path, "is not a string")),
    }
}

fn key(rec: &Map<String, Value>, path: &str) -> Result<Id, Rejection> {
    opt_key(rec, path)?.ok_or_else(|| missing(path))
}

/// The values at the table's paths under their native names (absent and null paths are left out).
fn mapped(rec: &Map<String, Value>, table: &[(&str, &str)]) -> Attrs {
    let mut attrs = Attrs::default();
    for (path, name) in table {
        if let Some(v) = get(rec, path).filter(|v| !v.is_null()) {
            attrs.insert(name, v.clone());
        }
    }
    attrs
}

/// Rewrites the namespaced form into the XED form at every depth: `xdm:x` -> `x`, `@id` -> `_id`, `ns:x` ->
/// `_ns.x`. Two keys that meet under one name are a duplicate key.
fn normalize(v: Value) -> Result<Value, Rejection> {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let v = normalize(v)?;
                let (parent, name) = match k.split_once(':') {
                    _ if k == "@id" => (None, "_id".to_owned()),
                    Some(("xdm", rest)) => (None, rest.to_owned()),
                    // A namespace prefix is a word (`marketo:`, `schema:`); map keys such as identity namespaces
                    // (`https://...`) are left alone.
                    Some((ns, rest))
                        if !ns.is_empty()
                            && ns.bytes().all(|b| b.is_ascii_alphanumeric())
                            && !rest.is_empty()
                            && !rest.starts_with('/') =>
                    {
                        (Some(format!("_{ns}")), rest.to_owned())
                    }
                    _ => (None, k),
                };
                let dup = |name: &str| Rejection {
                    reason: RejectReason::MalformedJson,
                    detail: format!("duplicate key `{name}` (in the XDM form and the platform form)"),
                };
                let slot = match parent {
                    None => &mut out,
                    Some(p) => match out.entry(p.clone()).or_insert_with(|| Value::Object(Map::new())) {
                        Value::Object(inner) => inner,
                        _ => return Err(dup(&p)),
                    },
                };
                if slot.contains_key(&name) {
                    return Err(dup(&name));
                }
                slot.insert(name, v);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => items.into_iter().map(normalize).collect::<Result<Vec<_>, _>>().map(Value::Array),
        other => Ok(other),
    }
}

/// Decodes one XDM record of `tenant` into a native event.
///
/// The event time is `timestamp` for an ExperienceEvent, else the record's last update
/// (`extSourceSystemAudit.lastUpdatedDate`, then `createdDate`, then `timestamp`). The event id is `_id`
/// (required on an ExperienceEvent); a record without one gets `xdm:` and a hash of its content, so that
/// the same record sent twice is a duplicate. A record flagged `isDeleted: true` is a delete.
///
/// # Errors
/// The [`Rejection`] of SPEC §4: `too_large`, `malformed_json` (also not an object, duplicate keys in either
/// form, invalid UTF-8, nesting over 128), `unknown_type` (no mapped class, or an unmapped `eventType`),
/// `missing_field` (the identity, the event time) and `invalid_field` (a key not a string, a time outside
/// the accepted range).
pub fn decode(raw: &[u8], tenant: &str, limits: &DecodeLimits) -> Result<InputEvent, Rejection> {
    let text = record_text(raw, limits)?;
    let StrictValue(value) = serde_json::from_str(text).map_err(|e| json_rejection(&e))?;
    let Value::Object(rec) = normalize(value)? else {
        return Err(Rejection { reason: RejectReason::MalformedJson, detail: "not a JSON object".into() });
    };
    let class = classify(&rec)?;
    let ts_path = match class {
        XdmClass::ExperienceEvent => "timestamp",
        _ => ["extSourceSystemAudit.lastUpdatedDate", "extSourceSystemAudit.createdDate", "timestamp"]
            .into_iter()
            .find(|p| !matches!(get(&rec, p), None | Some(Value::Null)))
            .ok_or_else(|| missing("extSourceSystemAudit.lastUpdatedDate"))?,
    };
    let ts = match get(&rec, ts_path) {
        Some(Value::String(s)) => checked_ts(ts_path, s, limits)?,
        None | Some(Value::Null) => return Err(missing(ts_path)),
        Some(_) => return Err(invalid(ts_path, "is not a string")),
    };
    let deleted = matches!(get(&rec, "isDeleted"), Some(Value::Bool(true)));
    let body = match class {
        XdmClass::Account => {
            let account_id = key(&rec, "accountKey.sourceKey")?;
            if deleted {
                EventBody::AccountDeleted { account_id }
            } else {
                EventBody::AccountUpserted { account_id, attributes: mapped(&rec, ACCOUNT_ATTRIBUTES) }
            }
        }
        XdmClass::Person => {
            let person_id = key(&rec, "b2b.personKey.sourceKey")?;
            if deleted {
                EventBody::PersonDeleted { person_id }
            } else {
                let account_id = match opt_key(&rec, "b2b.accountKey.sourceKey")? {
                    Some(a) => Some(a),
                    None => first_component_account(&rec)?,
                };
                EventBody::PersonUpserted { person_id, account_id, attributes: mapped(&rec, PERSON_ATTRIBUTES) }
            }
        }
        XdmClass::AccountPerson => {
            let person_id = key(&rec, "personKey.sourceKey")?;
            let account_id = key(&rec, "accountKey.sourceKey")?;
            if deleted || matches!(get(&rec, "isActive"), Some(Value::Bool(false))) {
                return Err(invalid(
                    if deleted { "isDeleted" } else { "isActive" },
                    "ends an account-person relation, which Caravan does not map: a person leaves an account when \
                     a later record links it to another one, or when it is deleted",
                ));
            }
            EventBody::PersonUpserted {
                person_id,
                account_id: Some(account_id),
                attributes: mapped(&rec, ACCOUNT_PERSON_ATTRIBUTES),
            }
        }
        XdmClass::Opportunity => {
            let opportunity_id = key(&rec, "opportunityKey.sourceKey")?;
            if deleted {
                EventBody::OpportunityDeleted { opportunity_id }
            } else {
                EventBody::OpportunityUpserted {
                    opportunity_id,
                    account_id: key(&rec, "accountKey.sourceKey")?,
                    attributes: mapped(&rec, OPPORTUNITY_ATTRIBUTES),
                }
            }
        }
        XdmClass::ExperienceEvent => activity(&rec)?,
    };
    let event_id = match get(&rec, "_id") {
        Some(Value::String(s)) => checked_id("_id", s)?,
        None | Some(Value::Null) if class != XdmClass::ExperienceEvent => content_id(&rec),
        None | Some(Value::Null) => return Err(missing("_id")),
        Some(_) => return Err(invalid("_id", "is not a string")),
    };
    Ok(InputEvent { tenant: Id::from(tenant), event_id, ts, body })
}

/// A person's account from its components (`personComponents[0].sourceAccountKey.sourceKey`), when
/// `b2b.accountKey` is not set.
fn first_component_account(rec: &Map<String, Value>) -> Result<Option<Id>, Rejection> {
    let Some(Value::Array(components)) = get(rec, "personComponents") else { return Ok(None) };
    match components.first() {
        Some(Value::Object(c)) => opt_key(c, "sourceAccountKey.sourceKey"),
        _ => Ok(None),
    }
}

fn activity(rec: &Map<String, Value>) -> Result<EventBody, Rejection> {
    let event_type = match get(rec, "eventType") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(invalid("eventType", "is not a string")),
    };
    let Some((_, kind, table)) = ACTIVITIES.iter().find(|(t, _, _)| *t == event_type) else {
        return Err(Rejection {
            reason: RejectReason::UnknownType,
            detail: format!("XDM eventType `{event_type}` is not mapped to an activity"),
        });
    };
    let person_id = key(rec, "personKey.sourceKey")?;
    let mut properties = mapped(rec, COMMON_PROPERTIES);
    properties.merge(&mapped(rec, table));
    properties.insert("event_type", Value::String(event_type.to_owned()));
    let mut kind = *kind;
    if event_type == "leadOperation.statusInCampaignProgressionChanged"
        && let Some(k) =
            progression_kind(get(rec, "leadOperation.campaignProgression.newStatusName").and_then(Value::as_str))
    {
        kind = k;
    }
    if event_type == "directMarketing.emailBouncedSoft" {
        properties.insert("soft", Value::Bool(true));
    }
    Ok(EventBody::PersonActivity { person_id, account_id: None, activity: Id::from(kind), properties })
}

/// `xdm:` and the hex of a 128-bit hash of the normalized record: the same record sent twice gets the same
/// id, and so is a duplicate.
fn content_id(rec: &Map<String, Value>) -> Id {
    let text = serde_json::to_string(rec).unwrap_or_default();
    Id::from(format!("xdm:{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes())))
}

#[cfg(test)]
mod tests;
