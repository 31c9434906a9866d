use super::*;
use serde_json::json;

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn decode_value(v: &Value) -> Result<InputEvent, Rejection> {
    decode(v.to_string().as_bytes(), "acme", &limits())
}

fn source(id: &str) -> Value {
    json!({"sourceType": "Marketo", "sourceInstanceID": "123-ABC-456", "sourceID": id,
           "sourceKey": format!("{id}@123-ABC-456.Marketo")})
}

fn audit() -> Value {
    json!({"createdDate": "2026-03-01T08:00:00Z", "lastUpdatedDate": "2026-03-02T09:30:00Z",
           "externalKey": {"sourceKey": "0015g00000ABC@00D.Salesforce"}})
}

fn reason(r: Result<InputEvent, Rejection>) -> (RejectReason, String) {
    let e = r.expect_err("rejected");
    (e.reason, e.detail)
}

#[test]
fn a_business_account_becomes_an_account_upsert() {
    let rec = json!({
        "_id": "acc-rec-1",
        "accountKey": source("100.mkto_org"),
        "accountName": "Northwind Traders",
        "accountOrganization": {"industry": "logistics", "numberOfEmployees": 4200,
                                "annualRevenue": {"amount": 1.5e9, "currencyCode": "USD"}},
        "accountType": "Customer",
        "extSourceSystemAudit": audit(),
        "accountParentKey": source("7.mkto_org"),
    });
    let e = decode_value(&rec).expect("decodes");
    assert_eq!(e.tenant, "acme");
    assert_eq!(e.event_id, "acc-rec-1");
    assert_eq!(e.ts.to_rfc3339(), "2026-03-02T09:30:00.000Z", "the last update is the event time");
    let EventBody::AccountUpserted { account_id, attributes } = e.body else { panic!("an account upsert") };
    assert_eq!(account_id, "100.mkto_org@123-ABC-456.Marketo");
    assert_eq!(attributes.get("name"), Some(&json!("Northwind Traders")));
    assert_eq!(attributes.get("employees"), Some(&json!(4200)));
    assert_eq!(attributes.get("industry"), Some(&json!("logistics")));
    assert_eq!(attributes.get("annual_revenue_currency"), Some(&json!("USD")));
    assert_eq!(attributes.get("parent_account_id"), Some(&json!("7.mkto_org@123-ABC-456.Marketo")));
    assert_eq!(attributes.get("crm_id"), Some(&json!("0015g00000ABC@00D.Salesforce")));
    assert_eq!(attributes.get("website"), None, "absent fields are not set");
}

#[test]
fn a_business_person_becomes_a_person_upsert_with_its_account() {
    let rec = json!({
        "_id": "p-rec-1",
        "b2b": {"personKey": source("42"), "accountKey": source("100.mkto_org"), "personType": "Lead",
                "personScore": 35},
        "person": {"name": {"firstName": "Ana", "lastName": "Silva"}},
        "workEmail": {"address": "ana@northwind.example"},
        "extendedWorkDetails": {"jobTitle": "CTO"},
        "extSourceSystemAudit": audit(),
    });
    let EventBody::PersonUpserted { person_id, account_id, attributes } = decode_value(&rec).expect("decodes").body
    else {
        panic!("a person upsert")
    };
    assert_eq!(person_id, "42@123-ABC-456.Marketo");
    assert_eq!(account_id.as_deref(), Some("100.mkto_org@123-ABC-456.Marketo"));
    assert_eq!(attributes.get("email"), Some(&json!("ana@northwind.example")));
    assert_eq!(attributes.get("job_title"), Some(&json!("CTO")));
    assert_eq!(attributes.get("first_name"), Some(&json!("Ana")));
    assert_eq!(attributes.get("score"), Some(&json!(35)));
    // Without b2b.accountKey the person's components name the account.
    let rec = json!({"_id": "p2", "b2b": {"personKey": source("43")}, "extSourceSystemAudit": audit(),
                     "personComponents": [{"sourceAccountKey": source("200.mkto_org")}]});
    let EventBody::PersonUpserted { account_id, .. } = decode_value(&rec).expect("decodes").body else { panic!() };
    assert_eq!(account_id.as_deref(), Some("200.mkto_org@123-ABC-456.Marketo"));
}

#[test]
fn an_account_person_relation_links_the_person_to_the_account() {
    let rec = json!({"accountPersonKey": source("ap-1"), "accountKey": source("100.mkto_org"),
                     "personKey": source("42"), "personRole": "Decision Maker", "isPrimary": true,
                     "extSourceSystemAudit": audit()});
    let e = decode_value(&rec).expect("decodes");
    assert!(e.event_id.starts_with("xdm:"), "a record without _id gets a content id: {}", e.event_id);
    assert_eq!(decode_value(&rec).expect("decodes").event_id, e.event_id, "the same record, the same id");
    let EventBody::PersonUpserted { person_id, account_id, attributes } = e.body else { panic!("a person upsert") };
    assert_eq!(person_id, "42@123-ABC-456.Marketo");
    assert_eq!(account_id.as_deref(), Some("100.mkto_org@123-ABC-456.Marketo"));
    assert_eq!(attributes.get("account_role"), Some(&json!("Decision Maker")));
    let mut ended = rec.clone();
    ended["isActive"] = json!(false);
    let (r, detail) = reason(decode_value(&ended));
    assert_eq!(r, RejectReason::InvalidField);
    assert!(detail.contains("isActive"), "{detail}");
}

#[test]
fn a_business_opportunity_becomes_an_opportunity_upsert() {
    let rec = json!({"_id": "o1", "opportunityKey": source("9001"), "accountKey": source("100.mkto_org"),
                     "opportunityName": "Fleet analytics", "opportunityStage": "Negotiation",
                     "opportunityAmount": {"amount": 120000, "currencyCode": "USD"}, "isClosed": false,
                     "isWon": false, "extSourceSystemAudit": audit()});
    let EventBody::OpportunityUpserted { opportunity_id, account_id, attributes } =
        decode_value(&rec).expect("decodes").body
    else {
        panic!("an opportunity upsert")
    };
    assert_eq!(opportunity_id, "9001@123-ABC-456.Marketo");
    assert_eq!(account_id, "100.mkto_org@123-ABC-456.Marketo");
    assert_eq!(attributes.get("stage"), Some(&json!("Negotiation")));
    assert_eq!(attributes.get("amount"), Some(&json!(120000)));
    assert_eq!(attributes.get("is_closed"), Some(&json!(false)));
    let mut no_account = rec.clone();
    no_account.as_object_mut().expect("object").remove("accountKey");
    assert_eq!(reason(decode_value(&no_account)).0, RejectReason::MissingField);
}

#[test]
fn deleted_records_become_deletes() {
    let account = json!({"_id": "a-del", "accountKey": source("100.mkto_org"), "isDeleted": true,
                         "extSourceSystemAudit": audit()});
    assert!(matches!(decode_value(&account).expect("decodes").body, EventBody::AccountDeleted { .. }));
    let person = json!({"_id": "p-del", "b2b": {"personKey": source("42")}, "isDeleted": true,
                        "extSourceSystemAudit": audit()});
    assert!(matches!(decode_value(&person).expect("decodes").body, EventBody::PersonDeleted { .. }));
    let opportunity = json!({"_id": "o-del", "opportunityKey": source("9"), "isDeleted": true,
                             "extSourceSystemAudit": audit()});
    assert!(matches!(decode_value(&opportunity).expect("decodes").body, EventBody::OpportunityDeleted { .. }));
}

fn event(event_type: &str, extra: Value) -> Value {
    let mut e = json!({"_id": format!("evt-{event_type}"), "timestamp": "2026-03-05T10:00:00Z",
                       "eventType": event_type, "producedBy": "self",
                       "personKey": source("42"), "personID": "42"});
    if let (Some(o), Value::Object(x)) = (e.as_object_mut(), extra) {
        o.extend(x);
    }
    e
}

fn activity_of(v: &Value) -> (String, Option<Id>, Attrs) {
    match decode_value(v).expect("decodes").body {
        EventBody::PersonActivity { person_id, account_id, activity, properties } => {
            assert_eq!(person_id, "42@123-ABC-456.Marketo");
            (activity.to_string(), account_id, properties)
        }
        other => panic!("an activity, got {other:?}"),
    }
}

#[test]
fn marketo_activities_become_native_activity_kinds_without_an_account() {
    let clicked = event(
        "directMarketing.emailClicked",
        json!({"directMarketing": {"mailingKey": source("m-7"), "mailingName": "welcome",
                                   "linkURL": "https://x.example/a"}}),
    );
    let (kind, account, props) = activity_of(&clicked);
    assert_eq!(kind, "email.clicked");
    assert_eq!(account, None, "activities carry no account: the person index routes them");
    assert_eq!(props.get("asset"), Some(&json!("welcome")));
    assert_eq!(props.get("asset_id"), Some(&json!("m-7@123-ABC-456.Marketo")));
    assert_eq!(props.get("event_type"), Some(&json!("directMarketing.emailClicked")));
    for (t, k) in [
        ("web.webpagedetails.pageViews", "web.visited"),
        ("web.formFilledOut", "form.filled"),
        ("directMarketing.emailOpened", "email.opened"),
        ("directMarketing.emailSent", "email.sent"),
        ("directMarketing.emailDelivered", "email.delivered"),
        ("directMarketing.emailBounced", "email.bounced"),
        ("directMarketing.emailUnsubscribed", "email.unsubscribed"),
        ("leadOperation.scoreChanged", "custom.score_changed"),
        ("listOperation.addToList", "custom.added_to_list"),
        ("opportunityEvent.opportunityUpdated", "custom.opportunity_updated"),
        ("leadOperation.interestingMoment", "custom.interesting_moment"),
    ] {
        assert_eq!(activity_of(&event(t, json!({}))).0, k, "{t}");
    }
    let soft = activity_of(&event("directMarketing.emailBouncedSoft", json!({})));
    assert_eq!((soft.0.as_str(), soft.2.get("soft")), ("email.bounced", Some(&json!(true))));
    // A program status of an event program is the native event kind; other statuses stay custom.
    let attended = event(
        "leadOperation.statusInCampaignProgressionChanged",
        json!({"leadOperation": {"campaignProgression": {"campaignKey": source("p-1"), "newStatusName": "Attended"}}}),
    );
    assert_eq!(activity_of(&attended).0, "event.attended");
    let other = event(
        "leadOperation.statusInCampaignProgressionChanged",
        json!({"leadOperation": {"campaignProgression": {"newStatusName": "Member"}}}),
    );
    assert_eq!(activity_of(&other).0, "custom.program_status_changed");
    // Every mapped kind is one the journey language accepts.
    for (_, kind, _) in ACTIVITIES {
        assert!(crate::input::is_activity_kind(kind), "{kind}");
    }
}

#[test]
fn records_missing_their_identity_or_time_are_rejected_with_the_field() {
    let mut e = event("directMarketing.emailOpened", json!({}));
    e.as_object_mut().expect("object").remove("personKey");
    let (r, detail) = reason(decode_value(&e));
    assert_eq!((r, detail.as_str()), (RejectReason::MissingField, "missing field `personKey.sourceKey`"));
    let mut e = event("directMarketing.emailOpened", json!({}));
    e.as_object_mut().expect("object").remove("_id");
    assert_eq!(reason(decode_value(&e)), (RejectReason::MissingField, "missing field `_id`".to_owned()));
    let mut e = event("directMarketing.emailOpened", json!({}));
    e.as_object_mut().expect("object").remove("timestamp");
    assert_eq!(reason(decode_value(&e)).0, RejectReason::MissingField);
    let no_time = json!({"_id": "a", "accountKey": source("1")});
    assert_eq!(reason(decode_value(&no_time)).0, RejectReason::MissingField);
    let no_key = json!({"_id": "a", "accountKey": {"sourceID": "1"}, "extSourceSystemAudit": audit()});
    assert_eq!(
        reason(decode_value(&no_key)),
        (RejectReason::MissingField, "missing field `accountKey.sourceKey`".into())
    );
    let bad_key = json!({"_id": "a", "accountKey": {"sourceKey": "a\u{7}b"}, "extSourceSystemAudit": audit()});
    assert_eq!(reason(decode_value(&bad_key)).0, RejectReason::InvalidField);
    let far = event("directMarketing.emailOpened", json!({"timestamp": "1970-01-01T00:00:00Z"}));
    assert_eq!(reason(decode_value(&far)).0, RejectReason::InvalidField);
}

#[test]
fn unmapped_records_and_event_types_are_unknown_types() {
    let (r, detail) = reason(decode_value(&event("commerce.purchases", json!({}))));
    assert_eq!(r, RejectReason::UnknownType);
    assert!(detail.contains("commerce.purchases"), "{detail}");
    let member = json!({"campaignMemberKey": source("cm"), "personKey": source("42")});
    assert_eq!(reason(decode_value(&member)).0, RejectReason::UnknownType);
    assert_eq!(reason(decode_value(&json!({"hello": 1}))).0, RejectReason::UnknownType);
}

#[test]
fn the_namespaced_form_reads_like_the_platform_form() {
    let namespaced = json!({
        "@id": "acc-ns",
        "xdm:accountKey": {"xdm:sourceKey": "100.mkto_org@123-ABC-456.Marketo"},
        "xdm:accountName": "Northwind",
        "xdm:extSourceSystemAudit": {"xdm:lastUpdatedDate": "2026-03-02T09:30:00Z"},
        "marketo:extra": "kept under _marketo",
        "xdm:identityMap": {"https://ns.example/4": [{"xdm:id": "1"}]},
    });
    let e = decode_value(&namespaced).expect("decodes");
    assert_eq!(e.event_id, "acc-ns");
    let EventBody::AccountUpserted { account_id, attributes } = e.body else { panic!() };
    assert_eq!(account_id, "100.mkto_org@123-ABC-456.Marketo");
    assert_eq!(attributes.get("name"), Some(&json!("Northwind")));
    // Both forms of one field in one record: a duplicate key.
    let both = json!({"_id": "x", "accountKey": source("1"), "xdm:accountKey": source("2"),
                      "extSourceSystemAudit": audit()});
    assert_eq!(reason(decode_value(&both)).0, RejectReason::MalformedJson);
}

#[test]
fn hostile_records_are_rejected_with_a_reason() {
    let l = limits();
    let cases: Vec<(Vec<u8>, RejectReason)> = vec![
        (b"[1, 2]".to_vec(), RejectReason::MalformedJson),
        (b"{\"accountKey\": ".to_vec(), RejectReason::MalformedJson),
        (vec![b'{', 0xff, b'}'], RejectReason::MalformedJson),
        (format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes(), RejectReason::MalformedJson),
        (br#"{"_id": "a", "_id": "b"}"#.to_vec(), RejectReason::MalformedJson),
        (br#"{"accountKey": {"sourceKey": "a"}, "accountScore": 1e999}"#.to_vec(), RejectReason::InvalidField),
        (vec![b' '; l.max_record_bytes + 1], RejectReason::TooLarge),
    ];
    for (raw, want) in cases {
        let got = decode(&raw, "acme", &l).expect_err("rejected");
        assert_eq!(got.reason, want, "{}: {}", String::from_utf8_lossy(&raw[..raw.len().min(60)]), got.detail);
        assert!(!got.detail.is_empty());
    }
}

#[test]
fn the_fixture_examples_decode_or_are_rejected_with_a_reason() {
    let dir = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../shared/fixtures/xdm");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    let mut seen = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.contains(".example.") {
            continue;
        }
        let raw = std::fs::read(entry.path()).expect("read");
        // The examples are thin (an id and little else): each decodes, or names its reason; none panics.
        if let Err(r) = decode(&raw, "acme", &limits()) {
            assert!(!r.detail.is_empty(), "{name}");
        }
        seen += 1;
    }
    assert!(seen >= 10, "read the fixture examples in {}", dir.display());
}

#[test]
fn the_mapping_page_lists_every_mapping() {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let page = std::fs::read_to_string(std::path::Path::new(&root).join("XDM.md")).expect("schemas/XDM.md");
    for (event_type, kind, props) in ACTIVITIES {
        assert!(page.contains(&format!("| `{event_type}` | `{kind}` |")), "XDM.md lacks {event_type} -> {kind}");
        for (path, name) in *props {
            assert!(page.contains(&format!("`{name}` (`{path}`)")), "XDM.md lacks {path} -> {name}");
        }
    }
    for table in [ACCOUNT_ATTRIBUTES, PERSON_ATTRIBUTES, ACCOUNT_PERSON_ATTRIBUTES, OPPORTUNITY_ATTRIBUTES] {
        for (path, name) in table {
            assert!(page.contains(&format!("| `{path}` | `{name}` |")), "XDM.md lacks {path} -> {name}");
        }
    }
}
