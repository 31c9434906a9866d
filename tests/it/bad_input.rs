//! Bad input: every malformed record gives one rejected record with its reason, changes nothing, and the
//! run goes on.

use crate::support::*;

const GOOD: [&str; 4] = [
    r#"{"tenant":"bench","type":"account.upserted","event_id":"g1","ts":"2026-01-01T00:00:00Z","account_id":"a","attributes":{"employees":5000}}"#,
    r#"{"tenant":"bench","type":"person.upserted","event_id":"g2","ts":"2026-01-01T00:00:00Z","person_id":"p","account_id":"a","attributes":{"job_title":"cto"}}"#,
    r#"{"tenant":"bench","type":"account.audience","event_id":"g3","ts":"2026-01-01T00:00:01Z","account_id":"a","audience_id":"target","status":"entered"}"#,
    r#"{"tenant":"bench","type":"person.activity","event_id":"g4","ts":"2026-01-02T00:00:00Z","person_id":"p","account_id":"a","activity":"email.clicked","properties":{"asset_id":"welcome"}}"#,
];

/// Bad records, each with the reason it must get.
fn bad() -> Vec<(Vec<u8>, &'static str)> {
    let env = r#""tenant":"bench","event_id":"b","ts":"2026-01-01T00:00:00Z""#;
    vec![
        (b"{this is not json".to_vec(), "malformed_json"),
        (b"[1,2,3]".to_vec(), "malformed_json"),
        (b"{\"tenant\":\"bench\",\"type\":\"account.deleted\",\"event_id\":\"\xff\xfe\",\"ts\":\"2026-01-01T00:00:00Z\"}".to_vec(), "malformed_json"),
        (format!(r#"{{{env},"type":"account.deleted","account_id":"a","account_id":"a"}}"#).into_bytes(), "malformed_json"),
        (format!(r#"{{{env},"type":"account.exploded","account_id":"a"}}"#).into_bytes(), "unknown_type"),
        (format!(r#"{{{env},"type":"account.upserted","account_id":"a"}}"#).into_bytes(), "missing_field"),
        (br#"{"type":"account.deleted","event_id":"b","ts":"2026-01-01T00:00:00Z","account_id":"a"}"#.to_vec(), "missing_field"),
        (format!(r#"{{{env},"type":"account.upserted","account_id":42,"attributes":{{}}}}"#).into_bytes(), "invalid_field"),
        (format!(r#"{{{env},"type":"account.upserted","account_id":"a","attributes":"employees"}}"#).into_bytes(), "invalid_field"),
        (br#"{"tenant":"bench","type":"account.deleted","event_id":"b","ts":"yesterday","account_id":"a"}"#.to_vec(), "invalid_field"),
        (br#"{"tenant":"bench","type":"account.deleted","event_id":"b","ts":"2026-02-30T00:00:00Z","account_id":"a"}"#.to_vec(), "invalid_field"),
        (format!(r#"{{{env},"type":"account.upserted","account_id":"a","attributes":{{"employees":1e999}}}}"#).into_bytes(), "invalid_field"),
        (format!(r#"{{{env},"type":"person.activity","person_id":"p","account_id":"a","activity":"email.teleported"}}"#).into_bytes(), "invalid_field"),
        (format!(r#"{{{env},"type":"person.activity","person_id":"nobody","activity":"email.opened"}}"#).into_bytes(), "unknown_person_account"),
        (format!(r#"{{"x":"{}"}}"#, "y".repeat(300)).into_bytes(), "too_large"),
        (br#"{"tenant":"bench","type":"account.deleted","event_id":"b","ts":"2026-01-01T00:00:00Z","account_id":"a\u0007"}"#.to_vec(), "invalid_field"),
        (br#"{"tenant":"bench","type":"account.deleted","event_id":"b","ts":"2300-01-01T00:00:00Z","account_id":"a"}"#.to_vec(), "invalid_field"),
        (br#"{"tenant":"bench","type":"account.deleted","event_id":"b","ts":"1999-12-31T23:59:59Z","account_id":"a"}"#.to_vec(), "invalid_field"),
        (format!("{}{}", "[".repeat(130), "]".repeat(110)).into_bytes(), "malformed_json"),
    ]
}

#[test]
fn each_bad_record_is_rejected_with_its_reason_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Interleave bad records between the good ones.
    let bad = bad();
    let mut mixed: Vec<u8> = Vec::new();
    let mut expected = Vec::new();
    let mut line = 0u64;
    for (i, good) in GOOD.iter().enumerate() {
        for (raw, reason) in bad.iter().skip(i).step_by(GOOD.len()) {
            mixed.extend_from_slice(raw);
            mixed.push(b'\n');
            line += 1;
            expected.push((line, *reason));
        }
        mixed.extend_from_slice(good.as_bytes());
        mixed.extend_from_slice(b"\n\n"); // blank lines are skipped, not rejected
        line += 2;
    }
    let mixed_path = dir.path().join("mixed.ndjson");
    std::fs::write(&mixed_path, &mixed).expect("write");
    let clean_path = dir.path().join("clean.ndjson");
    std::fs::write(&clean_path, GOOD.join("\n") + "\n").expect("write");

    let (out_mixed, out_clean) = (dir.path().join("mixed"), dir.path().join("clean"));
    replay(&reference_definitions(), &mixed_path, &out_mixed, None, &["--max-record-bytes", "250"]);
    replay(&reference_definitions(), &clean_path, &out_clean, None, &["--max-record-bytes", "250"]);

    let rejected = read_ndjson(&out_mixed.join("rejected.ndjson"));
    let got: Vec<(u64, String)> = rejected
        .iter()
        .map(|r| (r["source"]["line"].as_u64().expect("line"), r["reason"].as_str().expect("reason").to_owned()))
        .collect();
    assert_eq!(expected.len(), bad.len(), "every bad record is in the input");
    let want: Vec<(u64, String)> = expected.iter().map(|(l, r)| (*l, (*r).to_owned())).collect();
    assert_eq!(got, want);
    for r in &rejected {
        assert!(!r["detail"].as_str().unwrap_or_default().is_empty(), "{r}");
        assert!(r.get("raw").is_some() || r.get("raw_base64").is_some(), "{r}");
        assert!(r["source"]["file"].as_str().is_some_and(|f| f.ends_with("mixed.ndjson")));
    }
    assert!(
        rejected.iter().any(|r| r.get("raw_base64").is_some()),
        "the invalid UTF-8 line keeps its raw bytes in base64"
    );
    // The good records did exactly what they do alone: bad records changed nothing. (Action causes and
    // ids are the same; only the source lines differ, which outputs do not carry.)
    assert_eq!(read_ndjson(&out_mixed.join("actions.ndjson")), read_ndjson(&out_clean.join("actions.ndjson")));
    assert_eq!(read_ndjson(&out_mixed.join("changes.ndjson")), read_ndjson(&out_clean.join("changes.ndjson")));
    assert_eq!(read_ndjson(&out_clean.join("actions.ndjson")).len(), 3, "welcome, engaged, alert");
}

#[test]
fn duplicates_are_dropped_and_do_not_move_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = [
        r#"{"tenant":"t","type":"account.upserted","event_id":"e1","ts":"2026-01-01T00:00:00Z","account_id":"a","attributes":{"n":1}}"#,
        r#"{"tenant":"t","type":"account.upserted","event_id":"e1","ts":"2026-01-01T00:00:00Z","account_id":"a","attributes":{"n":2}}"#,
        r#"{"tenant":"other","type":"account.upserted","event_id":"e1","ts":"2026-01-01T00:00:00Z","account_id":"a","attributes":{"n":3}}"#,
        r#"{"tenant":"t","type":"account.upserted","event_id":"e2","ts":"2026-01-01T00:00:00Z","account_id":"a","attributes":{"n":4}}"#,
    ];
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let out = dir.path().join("out");
    let run = replay(&reference_definitions(), &input, &out, None, &[]);
    assert!(String::from_utf8_lossy(&run.stdout).contains("3 applied, 0 rejected, 1 duplicates"));
    let changes = read_ndjson(&out.join("changes.ndjson"));
    let seen: Vec<(String, i64)> = changes
        .iter()
        .map(|c| (c["tenant"].as_str().unwrap_or_default().to_owned(), c["version"].as_i64().unwrap_or(0)))
        .collect();
    assert_eq!(seen, [("t".into(), 1), ("other".into(), 1), ("t".into(), 2)]);
    assert_eq!(changes[2]["before"], serde_json::json!({"n": 1}));
}

#[test]
fn replay_with_a_tenant_registry_rejects_unknown_tenants_and_reads_the_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("caravan.toml");
    std::fs::write(
        &config,
        "[input]\nmax_record_bytes = 400\n\n[[tenants]]\nid = \"bench\"\nsandbox = \"prod\"\nsubscription = \"s1\"\n",
    )
    .expect("config");
    let big = format!(
        r#"{{"tenant":"bench","type":"account.upserted","event_id":"e3","ts":"2026-01-01T00:00:00Z","account_id":"b","attributes":{{"x":"{}"}}}}"#,
        "y".repeat(400)
    );
    let lines = [
        r#"{"tenant":"bench","type":"account.upserted","event_id":"e1","ts":"2026-01-01T00:00:00Z","account_id":"a","attributes":{}}"#.to_owned(),
        r#"{"tenant":"other","type":"account.upserted","event_id":"e2","ts":"2026-01-01T00:00:00Z","account_id":"a","attributes":{}}"#.to_owned(),
        big,
    ];
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let out = dir.path().join("out");
    let config_arg = config.display().to_string();
    replay(&reference_definitions(), &input, &out, None, &["--config", &config_arg]);
    let rejected = read_ndjson(&out.join("rejected.ndjson"));
    let reasons: Vec<&str> = rejected.iter().map(|r| r["reason"].as_str().unwrap_or_default()).collect();
    assert_eq!(reasons, ["unknown_tenant", "too_large"], "{rejected:?}");
    assert_eq!(rejected[0]["source"]["line"], 2);
    let changes = read_ndjson(&out.join("changes.ndjson"));
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["tenant"], "bench");
    // A flag wins over the file.
    let out2 = dir.path().join("out2");
    replay(&reference_definitions(), &input, &out2, None, &["--config", &config_arg, "--max-record-bytes", "100000"]);
    assert_eq!(read_ndjson(&out2.join("rejected.ndjson")).len(), 1, "only the unknown tenant");
    // A bad configuration stops the replay with the key named.
    std::fs::write(&config, "[input]\nmax_record_byte = 1\n").expect("config");
    let defs = reference_definitions().display().to_string();
    let input_arg = input.display().to_string();
    let out3 = dir.path().join("out3").display().to_string();
    let bad =
        caravan(&["replay", "--definitions", &defs, "--input", &input_arg, "--out", &out3, "--config", &config_arg]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("input.max_record_byte"), "{bad:?}");
}
