use super::*;

fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("caravan.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn error_of(file: Option<&Path>, vars: &[(&str, &str)]) -> String {
    match Config::load_from(file, env(vars)) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_are_valid_and_print_as_toml_that_reads_back() {
    let c = Config::load_from(None, Vec::new()).expect("defaults");
    assert_eq!(c, Config::default());
    let (_dir, path) = write(&c.to_toml());
    assert_eq!(Config::load_from(Some(&path), Vec::new()).expect("printed config reads back"), c);
}

#[test]
fn file_values_then_environment_overrides() {
    let (_dir, path) = write(
        r#"
[kafka]
brokers = "a:9092"
group_id = "g"
options = { "socket.timeout.ms" = "5000" }

[time]
allowed_disorder = "2s"

[input]
dedup_window = 10
"#,
    );
    let c = Config::load_from(
        Some(&path),
        env(&[
            ("CARAVAN_KAFKA__BROKERS", "b:9093,c:9094"),
            ("CARAVAN_INPUT__DEDUP_WINDOW", "42"),
            ("CARAVAN_STATE__SYNC", "true"),
            ("CARAVAN_TIME__ALLOWED_DISORDER", "250ms"),
            // Not configuration: no `__`.
            ("CARAVAN_BIN", "/x/caravan"),
            ("OTHER__THING", "1"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.kafka.brokers, "b:9093,c:9094");
    assert_eq!(c.kafka.group_id, "g", "file value kept");
    assert_eq!(c.kafka.options.get("socket.timeout.ms").map(String::as_str), Some("5000"));
    assert_eq!(c.input.dedup_window, 42);
    assert!(c.state.sync);
    assert_eq!(c.time.allowed_disorder, Duration::from_millis(250));
    assert_eq!(c.time.allowed_disorder_ns(), 250_000_000);
    assert_eq!(c.changelog_topic(), "g.changelog");
}

#[test]
fn unknown_keys_are_refused_with_the_key_and_its_source() {
    let (_dir, path) = write("[kafka]\nbrokrs = \"a:9092\"\n");
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("`kafka.brokrs`") && e.contains("unknown field"), "{e}");
    assert!(e.contains("caravan.toml"), "names the file: {e}");

    let (_dir, path) = write("[kafak]\nbrokers = \"a:9092\"\n");
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("`kafak`"), "{e}");

    let e = error_of(None, &[("CARAVAN_KAFKA__BROKRS", "x")]);
    assert!(e.contains("`kafka.brokrs`") && e.contains("CARAVAN_KAFKA__BROKRS"), "{e}");
}

#[test]
fn bad_values_are_refused_with_the_key() {
    let e = error_of(None, &[("CARAVAN_INPUT__DEDUP_WINDOW", "lots")]);
    assert!(e.contains("`input.dedup_window`") && e.contains("CARAVAN_INPUT__DEDUP_WINDOW"), "{e}");

    let (_dir, path) = write("[time]\nallowed_disorder = \"soon\"\n");
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("`time.allowed_disorder`") && e.contains("not a duration"), "{e}");

    let (_dir, path) = write("[time]\nmode = \"wallclock\"\n");
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("`time.mode`") && e.contains("processing"), "{e}");

    let (_dir, path) = write("[admin]\nlisten = \"not an address\"\n");
    assert!(error_of(Some(&path), &[]).contains("`admin.listen`"));

    let (_dir, path) = write("[input]\nmin_ts = \"2030-01-01T00:00:00Z\"\nmax_ts = \"2020-01-01T00:00:00Z\"\n");
    assert!(error_of(Some(&path), &[]).contains("input.min_ts must be earlier than input.max_ts"));

    let (_dir, path) = write("[input]\nmax_ts = \"tomorrow\"\n");
    assert!(error_of(Some(&path), &[]).contains("input.max_ts"));

    let e = error_of(None, &[("CARAVAN_COMMIT__MAX_RECORDS", "0")]);
    assert!(e.contains("commit.max_records"), "{e}");

    let e = error_of(Some(Path::new("/nonexistent/caravan.toml")), &[]);
    assert!(e.contains("/nonexistent/caravan.toml") && e.contains("not found"), "{e}");
}

#[test]
fn kafka_options_may_not_override_what_the_engine_owns() {
    let (_dir, path) = write("[kafka.options]\n\"isolation.level\" = \"read_uncommitted\"\n\"linger.ms\" = \"1\"\n");
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("kafka.options.\"isolation.level\"") && !e.contains("linger.ms"), "{e}");
}

#[test]
fn the_transactional_id_is_the_instance_id_unless_set_apart() {
    let c = Config::load_from(None, env(&[("CARAVAN_KAFKA__INSTANCE_ID", "pod-3")])).expect("valid");
    assert_eq!(c.kafka.transactional_id(), "pod-3");
    let c = Config::load_from(
        None,
        env(&[("CARAVAN_KAFKA__INSTANCE_ID", "pod-3"), ("CARAVAN_KAFKA__TRANSACTIONAL_ID", "pod-3.b")]),
    )
    .expect("valid");
    assert_eq!((c.kafka.instance_id.as_str(), c.kafka.transactional_id()), ("pod-3", "pod-3.b"));
    let (_dir, path) = write("[kafka]\ntransactional_id = \" \"\n");
    assert!(error_of(Some(&path), &[]).contains("kafka.transactional_id must not be empty"));
}

#[test]
fn tenant_registry_is_one_to_one() {
    let ok = "[[tenants]]\nid = \"acme\"\nsandbox = \"prod\"\nsubscription = \"sub-1\"\n\
              [[tenants]]\nid = \"globex\"\nsandbox = \"prod-2\"\nsubscription = \"sub-2\"\n";
    let (_dir, path) = write(ok);
    assert_eq!(Config::load_from(Some(&path), Vec::new()).expect("valid").tenants.len(), 2);

    let shared_subscription = "[[tenants]]\nid = \"acme\"\nsandbox = \"prod\"\nsubscription = \"sub-1\"\n\
                               [[tenants]]\nid = \"globex\"\nsandbox = \"dev\"\nsubscription = \"sub-1\"\n";
    let (_dir, path) = write(shared_subscription);
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("subscription `sub-1` is paired with two sandboxes"), "{e}");
    assert!(e.contains("tenant `acme`") && e.contains("tenant `globex`"), "names both tenants: {e}");

    let shared_sandbox = "[[tenants]]\nid = \"acme\"\nsandbox = \"prod\"\nsubscription = \"sub-1\"\n\
                          [[tenants]]\nid = \"globex\"\nsandbox = \"prod\"\nsubscription = \"sub-2\"\n";
    let (_dir, path) = write(shared_sandbox);
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("sandbox `prod` is paired with two subscriptions"), "{e}");
    assert!(e.contains("tenant `acme`") && e.contains("tenant `globex`"), "{e}");

    let twice = "[[tenants]]\nid = \"acme\"\nsandbox = \"a\"\nsubscription = \"s1\"\n\
                 [[tenants]]\nid = \"acme\"\nsandbox = \"b\"\nsubscription = \"s2\"\n";
    let (_dir, path) = write(twice);
    assert!(error_of(Some(&path), &[]).contains("tenant `acme` is registered twice"));

    let (_dir, path) = write("[[tenants]]\nid = \"acme\"\nsandbox = \"a\"\n");
    assert!(error_of(Some(&path), &[]).contains("subscription"), "a missing key is named");
}

#[test]
fn the_example_configuration_is_valid_and_shows_the_defaults() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()));
    let c = Config::load_from(Some(&root.join("../ops/caravan.toml")), Vec::new()).expect("ops/caravan.toml is valid");
    let mut defaults = Config::default();
    // The example points at the local test broker.
    defaults.kafka.brokers = "127.0.0.1:19092".into();
    assert_eq!(c, defaults, "ops/caravan.toml documents the defaults");
}

#[test]
fn admin_tokens_are_distinct_come_from_the_environment_and_never_print() {
    let registry = r#"
[admin]
token = "op"

[[tenants]]
id = "a"
sandbox = "sa"
subscription = "ua"
admin_token = "ta"

[[tenants]]
id = "b"
sandbox = "sb"
subscription = "ub"
admin_token = "op"
"#;
    let (_dir, path) = write(registry);
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("tenants[1].admin_token repeats admin.token"), "{e}");
    // The operator token from the environment (where secrets belong) resolves the clash.
    let c = Config::load_from(Some(&path), env(&[("CARAVAN_ADMIN__TOKEN", "from-env")])).expect("valid");
    assert_eq!(c.admin.token.as_deref(), Some("from-env"));
    let e = error_of(Some(&path), &[("CARAVAN_ADMIN__TOKEN", " ")]);
    assert!(e.contains("admin.token must not be empty"), "{e}");
    let printed = c.to_toml();
    assert!(!printed.contains("from-env") && !printed.contains("\"ta\""), "tokens are redacted: {printed}");
    assert_eq!(printed.matches("<redacted>").count(), 3, "{printed}");
}

#[test]
fn an_xdm_source_names_its_tenant_and_a_native_one_does_not() {
    let (_dir, path) = write("[input]\nformat = \"xdm\"\n");
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("input.tenant must be set when input.format = \"xdm\""), "{e}");
    let c = Config::load_from(Some(&path), env(&[("CARAVAN_INPUT__TENANT", "acme")])).expect("valid");
    assert_eq!((c.input.format, c.input.tenant.as_deref()), (InputFormat::Xdm, Some("acme")));
    let e = error_of(None, &[("CARAVAN_INPUT__TENANT", "acme")]);
    assert!(e.contains("input.tenant is only for input.format = \"xdm\""), "{e}");
    let e = error_of(None, &[("CARAVAN_INPUT__FORMAT", "avro")]);
    assert!(e.contains("CARAVAN_INPUT__FORMAT") || e.contains("input.format"), "{e}");
    let (_dir, path) = write(
        "[input]\nformat = \"xdm\"\ntenant = \"other\"\n\n[[tenants]]\nid = \"acme\"\nsandbox = \"s\"\nsubscription = \"u\"\n",
    );
    let e = error_of(Some(&path), &[]);
    assert!(e.contains("input.tenant `other` is not in the tenant registry"), "{e}");
}

#[test]
fn secrets_among_the_kafka_options_are_never_printed() {
    let text = r#"
[kafka.options]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "caravan"
"sasl.password" = "hunter2-sasl"
"ssl.key.password" = "hunter2-key"
"ssl.keystore.password" = "hunter2-store"
"sasl.oauthbearer.client.secret" = "hunter2-oauth"
"ssl.key.pem" = "-----BEGIN PRIVATE KEY----- hunter2-pem"
"#;
    let (_dir, path) = write(text);
    let c = Config::load_from(Some(&path), env(&[])).expect("valid");
    let printed = c.to_toml();
    assert!(!printed.contains("hunter2"), "a secret is printed: {printed}");
    assert_eq!(printed.matches("<redacted>").count(), 5, "{printed}");
    assert!(printed.contains("SCRAM-SHA-512") && printed.contains("\"caravan\""), "the rest is shown: {printed}");
    for key in ["sasl.username", "security.protocol", "ssl.ca.location", "sasl.mechanisms"] {
        assert!(!is_secret_option(key), "{key} is not a secret");
    }
}

#[test]
fn kafka_options_come_from_the_environment_with_underscores_for_dots() {
    let vars = [
        ("CARAVAN_KAFKA__OPTIONS__SASL_PASSWORD", "from-env"),
        ("CARAVAN_KAFKA__OPTIONS__SESSION_TIMEOUT_MS", "10000"),
        ("CARAVAN_KAFKA__OPTIONS__SECURITY_PROTOCOL", "SASL_SSL"),
    ];
    let c = Config::load_from(None, env(&vars)).expect("valid");
    let got: Vec<(&str, &str)> = c.kafka.options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        got,
        [("sasl.password", "from-env"), ("security.protocol", "SASL_SSL"), ("session.timeout.ms", "10000")]
    );
    assert!(!c.to_toml().contains("from-env"), "the password is not printed");
    // The engine's own keys stay refused, whatever sets them.
    let e = error_of(None, &[("CARAVAN_KAFKA__OPTIONS__GROUP_ID", "x")]);
    assert!(e.contains("kafka.options.\"group.id\" is set by the engine itself"), "{e}");
}
