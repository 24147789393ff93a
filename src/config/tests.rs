use super::*;

const KEY_A: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const KEY_B: &str = "sha256:486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7";

fn no_env(_: &str) -> Option<String> {
    None
}

fn example(extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9090"
[[deployments]]
name = "meta-llama3-8b-qwerty"
model = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct"
backend = "http://127.0.0.1:18000"
keys = ["{KEY_A}", "{KEY_B}"]
{extra}"#
    )
}

#[test]
fn the_issue_example_parses() {
    let config = Config::parse(&example(""), "t.toml", &no_env).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9090");
    let d = &config.deployments[0];
    assert_eq!(d.name, "meta-llama3-8b-qwerty");
    assert_eq!(d.backends[0].url.to_string(), "http://127.0.0.1:18000");
    assert!(d.keys.secondary.is_some());
    assert_eq!(d.backends[0].key, None);
    assert_eq!(config.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
}

#[test]
fn the_shipped_example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tollgate.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let env = |name: &str| (name == "LLAMA_BACKEND_KEY").then(|| "secret".to_owned());
    let config = Config::parse(&text, "tollgate.example.toml", &env).unwrap();
    assert!(!config.deployments.is_empty());
}

#[test]
fn unknown_fields_name_file_line_and_field() {
    let err = Config::parse(&example("colour = \"blue\"\n"), "t.toml", &no_env).unwrap_err();
    assert_eq!(err.file, "t.toml");
    assert_eq!(err.line, 10);
    assert_eq!(err.field, "colour");
    assert!(err.to_string().starts_with("t.toml:10:"), "{err}");
}

#[test]
fn bad_names_are_rejected_at_their_line() {
    let text = example("").replace("meta-llama3-8b-qwerty", "9bad_name");
    let err = Config::parse(&text, "t.toml", &no_env).unwrap_err();
    assert_eq!(err.line, 6);
    assert_eq!(err.field, "deployments[0].name");
    assert!(err.message.contains("start with a letter"));
}

#[test]
fn duplicate_names_are_rejected() {
    let second = format!(
        "[[deployments]]\nname = \"META-llama3-8b-qwerty\"\nmodel = \"m\"\nbackend = \"http://127.0.0.1:1\"\nkeys = [\"{KEY_A}\"]\n"
    );
    let err = Config::parse(&example(&second), "t.toml", &no_env).unwrap_err();
    assert_eq!(err.field, "deployments[1].name");
    assert!(err.message.contains("unique"));
}

#[test]
fn backend_key_env_is_resolved_or_named_when_missing() {
    let text = example("backend_key_env = \"LLAMA_BACKEND_KEY\"\n");
    let err = Config::parse(&text, "t.toml", &no_env).unwrap_err();
    assert_eq!(err.field, "deployments[0].backend_key_env");
    assert!(err.message.contains("LLAMA_BACKEND_KEY"));
    let env = |name: &str| (name == "LLAMA_BACKEND_KEY").then(|| "k".to_owned());
    let config = Config::parse(&text, "t.toml", &env).unwrap();
    assert_eq!(config.deployments[0].backends[0].key.as_ref().map(crate::core::secret::Secret::expose), Some("k"));
}

#[test]
fn a_backend_key_that_cannot_be_a_header_is_refused_by_name_and_secrets_never_print() {
    let text = example("backend_key_env = \"LLAMA_BACKEND_KEY\"\n");
    for bad in ["SecretBackendValue\n", "Secret\rBackend", "Secret\u{1}Value"] {
        let env = |name: &str| (name == "LLAMA_BACKEND_KEY").then(|| bad.to_owned());
        let err = Config::parse(&text, "t.toml", &env).unwrap_err();
        assert_eq!(err.field, "deployments[0].backend_key_env");
        assert!(err.message.contains("LLAMA_BACKEND_KEY") && err.message.contains("header"), "{err}");
        assert!(!err.to_string().contains("Secret"), "the value is never repeated: {err}");
    }
    let env = |name: &str| (name == "LLAMA_BACKEND_KEY").then(|| "SecretBackendValue".to_owned());
    let config = Config::parse(&text, "t.toml", &env).unwrap();
    let printed = format!("{config:?}");
    assert!(!printed.contains("SecretBackendValue"), "{printed}");
    assert!(printed.contains("(redacted)"));
}

#[test]
fn plain_keys_and_bad_values_are_rejected() {
    let text = example("").replace(KEY_B, "not-hashed");
    let err = Config::parse(&text, "t.toml", &no_env).unwrap_err();
    assert_eq!(err.field, "deployments[0].keys[1]");
    let text = example("").replace("127.0.0.1:8080", "localhost");
    assert_eq!(Config::parse(&text, "t.toml", &no_env).unwrap_err().field, "server.listen");
    let text = example("").replace("http://127.0.0.1:18000", "127.0.0.1:18000");
    assert_eq!(Config::parse(&text, "t.toml", &no_env).unwrap_err().field, "deployments[0].backend");
    let err = Config::parse("[server\n", "t.toml", &no_env).unwrap_err();
    assert_eq!(err.line, 1);
}

#[test]
fn name_rule() {
    assert!(check_deployment_name("a").is_ok());
    assert!(check_deployment_name(&format!("a{}", "b".repeat(51))).is_ok());
    assert!(check_deployment_name(&format!("a{}", "b".repeat(52))).is_err());
    assert!(check_deployment_name("").is_err());
    assert!(check_deployment_name("-a").is_err());
    assert!(check_deployment_name("a.b").is_err());
}

#[test]
fn quota_fields_default_to_the_seed_and_are_checked() {
    let d = &Config::parse(&example(""), "t.toml", &no_env).unwrap().deployments[0];
    assert_eq!(d.limits, Limits { requests_per_minute: 1000, tokens_per_minute: 200_000 });
    assert_eq!(d.default_max_tokens, DEFAULT_MAX_TOKENS);
    assert_eq!(d.tokenizer, Tokenizer::Bpe);
    let text =
        example("requests_per_minute = 10\ntokens_per_minute = 500\ndefault_max_tokens = 100\ntokenizer = \"chars\"\n");
    let d = &Config::parse(&text, "t.toml", &no_env).unwrap().deployments[0];
    assert_eq!((d.limits.requests_per_minute, d.limits.tokens_per_minute, d.default_max_tokens), (10, 500, 100));
    assert_eq!(d.tokenizer, Tokenizer::Chars);
    for (extra, field) in [
        ("requests_per_minute = 0", "requests_per_minute"),
        ("tokens_per_minute = 2000000000", "tokens_per_minute"),
        ("tokens_per_minute = 50\ndefault_max_tokens = 51", "default_max_tokens"),
        ("tokenizer = \"gpt\"", "tokenizer"),
    ] {
        let err = Config::parse(&example(extra), "t.toml", &no_env).unwrap_err();
        assert!(err.field.ends_with(field), "{extra}: {err}");
        assert_eq!(err.line, 10 + extra.matches('\n').count(), "{err}");
    }
}

#[test]
fn waiting_is_off_unless_max_wait_ms_and_its_caps_are_checked() {
    let d = &Config::parse(&example(""), "t.toml", &no_env).unwrap().deployments[0];
    assert_eq!(d.queue, QueueConfig::off(d.limits));
    assert!(d.queue.max_wait.is_zero());
    let text = example("tokens_per_minute = 5000\nmax_wait_ms = 2500\nmax_queued_requests = 7\n");
    let d = &Config::parse(&text, "t.toml", &no_env).unwrap().deployments[0];
    assert_eq!(
        (d.queue.max_wait, d.queue.max_requests, d.queue.max_tokens),
        (std::time::Duration::from_millis(2500), 7, 5000),
        "the token cap defaults to a minute of the deployment's tokens"
    );
    for (extra, field) in [
        ("max_wait_ms = 600001", "max_wait_ms"),
        ("max_queued_requests = 0", "max_queued_requests"),
        ("max_queued_requests = 100001", "max_queued_requests"),
        ("max_queued_tokens = 0", "max_queued_tokens"),
    ] {
        let err = Config::parse(&example(extra), "t.toml", &no_env).unwrap_err();
        assert!(err.field.ends_with(field), "{extra}: {err}");
        assert_eq!(err.line, 10, "{err}");
    }
}

fn with_limits(limits: &str) -> String {
    format!("[limits]\n{limits}\n{}", example(""))
}

#[test]
fn the_quota_store_is_memory_unless_redis_is_asked_for() {
    assert_eq!(Config::parse(&example(""), "t.toml", &no_env).unwrap().store, StoreConfig::Memory);
    assert_eq!(
        Config::parse(&with_limits("store = \"memory\""), "t.toml", &no_env).unwrap().store,
        StoreConfig::Memory
    );
    let config = Config::parse(
        &with_limits(
            "store = \"redis\"\nredis_url = \"rediss://:pw@redis.internal:6380/2\"\non_store_error = \"fail-closed\"\nreplicas = 3\nkey_prefix = \"gw1:\"\nstore_timeout_ms = 50",
        ),
        "t.toml",
        &no_env,
    )
    .unwrap();
    assert!(!format!("{config:?}").contains(":pw@"));
    let StoreConfig::Redis(redis) = config.store else { panic!("redis store expected") };
    assert_eq!(redis.on_error, OnStoreError::FailClosed);
    assert_eq!(redis.replicas, 3);
    assert_eq!(redis.key_prefix, "gw1:");
    assert_eq!(redis.timeout, Duration::from_millis(50));
    // The URL may hold a password: Debug never shows it (nor the whole config's, above).
    assert!(!format!("{redis:?}").contains("pw"), "{redis:?}");
    let defaults =
        Config::parse(&with_limits("store = \"redis\"\nredis_url = \"redis://127.0.0.1\""), "t.toml", &no_env);
    let StoreConfig::Redis(redis) = defaults.unwrap().store else { panic!("redis store expected") };
    assert_eq!(
        (redis.on_error, redis.replicas, redis.key_prefix.as_str()),
        (OnStoreError::Local, 1, "tollgate:quota:")
    );
}

#[test]
fn a_redis_url_names_one_server_a_cluster_or_a_primary_behind_sentinel() {
    let topology = |url: &str| {
        let config =
            Config::parse(&with_limits(&format!("store = \"redis\"\nredis_url = \"{url}\"")), "t.toml", &no_env)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        let StoreConfig::Redis(redis) = config.store else { panic!("redis store expected") };
        assert!(!format!("{redis:?}").contains("pw"), "{redis:?}");
        redis.topology
    };
    assert_eq!(topology("redis://127.0.0.1:6379"), RedisTopology::Single);
    let RedisTopology::Cluster { nodes } = topology("rediss+cluster://u:pw@d@10.0.0.1:7000, 10.0.0.2:7001") else {
        panic!("a cluster expected")
    };
    let nodes: Vec<&str> = nodes.iter().map(|n| n.expose()).collect();
    assert_eq!(nodes, ["rediss://u:pw@d@10.0.0.1:7000/", "rediss://u:pw@d@10.0.0.2:7001/"], "the password may hold @");
    let RedisTopology::Sentinel { sentinels, master, primary } =
        topology("redis+sentinel://:pw@s1:26379,[::1]:26380/main/3")
    else {
        panic!("sentinel expected")
    };
    assert_eq!(sentinels, [("s1".to_owned(), 26379), ("::1".to_owned(), 26380)]);
    assert_eq!(master, "main");
    assert_eq!(primary.expose(), "redis://:pw@sentinel-primary/3");
}

#[test]
fn bad_quota_store_settings_name_their_line_and_say_what_to_write() {
    for (limits, line, field, says) in [
        ("store = \"etcd\"", 2, "limits.store", "\"memory\" or \"redis\""),
        ("store = \"redis\"", 2, "limits.redis_url", "needs redis_url"),
        ("store = \"redis\"\nredis_url = \"http://x\"", 3, "limits.redis_url", "unknown scheme 'http://'"),
        ("store = \"redis\"\nredis_url = \"redis+cluster://a:1,,b:2\"", 3, "limits.redis_url", "empty host"),
        (
            "store = \"redis\"\nredis_url = \"redis+cluster://:secret@a:1,b\"",
            3,
            "limits.redis_url",
            "host 'b' names no port",
        ),
        ("store = \"redis\"\nredis_url = \"redis+cluster://a:1/2\"", 3, "limits.redis_url", "only database 0"),
        (
            "store = \"redis\"\nredis_url = \"redis+sentinel://:secret@a:26379\"",
            3,
            "limits.redis_url",
            "names no primary",
        ),
        ("store = \"redis\"\nredis_url = \"redis+sentinel://a:26379/main/x\"", 3, "limits.redis_url", "database 'x'"),
        ("store = \"redis\"\nredis_url = \"redis://:secret@[bad\"", 3, "limits.redis_url", "not a valid Redis URL"),
        ("redis_url = \"redis://x\"", 2, "limits.redis_url", "only used with store = \"redis\""),
        (
            "store = \"redis\"\nredis_url = \"redis://x\"\non_store_error = \"retry\"",
            4,
            "limits.on_store_error",
            "fail-open",
        ),
        ("store = \"redis\"\nredis_url = \"redis://x\"\nreplicas = 0", 4, "limits.replicas", "between 1 and 10000"),
        (
            "store = \"redis\"\nredis_url = \"redis://x\"\nkey_prefix = \"a b\"",
            4,
            "limits.key_prefix",
            "without spaces",
        ),
        (
            "store = \"redis\"\nredis_url = \"redis://x\"\nstore_timeout_ms = 0",
            4,
            "limits.store_timeout_ms",
            "between 1",
        ),
        (
            "store = \"redis\"\nredis_url = \"redis://x\"\nredis_ca_file = \"ca.pem\"",
            4,
            "limits.redis_ca_file",
            "rediss://",
        ),
        ("store = \"redis\"\nredis_url = \"redis://x\"\nshards = 2", 4, "shards", "unknown field"),
    ] {
        let err = Config::parse(&with_limits(limits), "t.toml", &no_env).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (line, field), "{limits}: {err}");
        assert!(err.message.contains(says), "{limits}: {err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

#[test]
fn workers_default_to_one_per_core_and_are_checked() {
    let config = Config::parse(&example(""), "t.toml", &no_env).unwrap();
    assert_eq!(config.server.workers, default_workers());
    assert_eq!(config.backend.workers, config.server.workers, "one set of pools per worker");
    let text = example("").replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nworkers = 3");
    let config = Config::parse(&text, "t.toml", &no_env).unwrap();
    assert_eq!((config.server.workers, config.backend.workers), (3, 3));
    for bad in ["0", "257"] {
        let text = example("")
            .replace("listen = \"127.0.0.1:8080\"", &format!("listen = \"127.0.0.1:8080\"\nworkers = {bad}"));
        let err = Config::parse(&text, "t.toml", &no_env).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (3, "server.workers"), "{err}");
        assert!(err.to_string().contains("between 1 and 256"), "{err}");
    }
}

fn pool_config(pool: &str) -> String {
    format!(
        r#"[[deployments]]
name = "llama-pool"
model = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct"
keys = ["{KEY_A}"]
tokens_per_minute = 400000
{pool}"#
    )
}

const TWO_BACKENDS: &str = r#"max_attempts = 2
deadline_ms = 9000
[[deployments.backends]]
url = "https://llama-east.example.net"
key_env = "LLAMA_EAST_KEY"
requests_per_minute = 1000
tokens_per_minute = 200000
weight = 3
priority = 0
[[deployments.backends]]
url = "https://llama-west.example.net"
name = "west"
tokens_per_minute = 200000
priority = 1
"#;

#[test]
fn a_pool_of_backends_parses_with_its_own_limits_weights_and_priorities() {
    let env = |name: &str| (name == "LLAMA_EAST_KEY").then(|| "east-secret".to_owned());
    let config = Config::parse(&pool_config(TWO_BACKENDS), "t.toml", &env).unwrap();
    let d = &config.deployments[0];
    assert_eq!((d.max_attempts, d.deadline), (2, Duration::from_millis(9000)));
    let [east, west] = d.backends.as_slice() else { panic!("two backends: {:?}", d.backends) };
    assert_eq!(east.url.to_string(), "https://llama-east.example.net");
    assert_eq!(&*east.name, "https://llama-east.example.net");
    assert_eq!(east.key.as_ref().map(crate::core::secret::Secret::expose), Some("east-secret"));
    assert_eq!(east.limits, Some(Limits { requests_per_minute: 1000, tokens_per_minute: 200_000 }));
    assert_eq!((east.weight, east.priority), (3, 0));
    assert_eq!(&*west.name, "west");
    assert_eq!(west.key, None);
    // Only tokens limited: requests as good as unlimited.
    assert_eq!(west.limits, Some(Limits { requests_per_minute: MAX_PER_MINUTE, tokens_per_minute: 200_000 }));
    assert_eq!((west.weight, west.priority), (1, 1));
}

#[test]
fn one_backend_defaults_to_three_attempts_within_the_first_byte_timeout() {
    let config = Config::parse(&example("first_byte_timeout_ms = 1500\n"), "t.toml", &no_env).unwrap();
    let d = &config.deployments[0];
    assert_eq!(d.backends.len(), 1);
    assert_eq!((d.max_attempts, d.deadline), (3, Duration::from_millis(1500)));
    assert_eq!((d.backends[0].weight, d.backends[0].priority, d.backends[0].limits), (1, 0, None));
}

#[test]
fn pool_mistakes_name_their_field() {
    let env = |_: &str| Some("k".to_owned());
    let cases: [(String, &str, &str); 8] = [
        (
            pool_config("backend = \"http://a:1\"\n[[deployments.backends]]\nurl = \"http://b:1\"\n"),
            "deployments[0].backend",
            "not both",
        ),
        (pool_config("backends = []\n"), "deployments[0].backends", "between 1 and 64"),
        (
            pool_config(
                "[[deployments.backends]]\nurl = \"http://a:1\"\n[[deployments.backends]]\nurl = \"http://a:1/\"\n",
            ),
            "deployments[0].backends[1].url",
            "listed twice",
        ),
        (
            pool_config("[[deployments.backends]]\nurl = \"http://a:1\"\nweight = 0\n"),
            "deployments[0].backends[0].weight",
            "between 1 and 10000",
        ),
        (pool_config("[[deployments.backends]]\nurl = \"ftp://a:1\"\n"), "deployments[0].backends[0].url", "http://"),
        (
            pool_config("max_attempts = 0\n[[deployments.backends]]\nurl = \"http://a:1\"\n"),
            "deployments[0].max_attempts",
            "between 1 and 64",
        ),
        (
            pool_config("backend_key_env = \"K\"\n[[deployments.backends]]\nurl = \"http://a:1\"\n"),
            "deployments[0].backend_key_env",
            "key_env",
        ),
        (
            pool_config("[[deployments.backends]]\nurl = \"http://a:1\"\nname = \"a b\"\n"),
            "deployments[0].backends[0].name",
            "no spaces",
        ),
    ];
    for (text, field, says) in cases {
        let err = Config::parse(&text, "t.toml", &env).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(says), "{err}");
        assert!(err.line > 0, "{err}");
    }
    let unknown = pool_config("[[deployments.backends]]\nurl = \"http://a:1\"\nwieght = 2\n");
    let err = Config::parse(&unknown, "t.toml", &env).unwrap_err();
    assert!(err.message.contains("wieght"), "{err}");
}

#[test]
fn a_catalog_model_can_be_a_pool_its_deployments_inherit() {
    let text = format!(
        r#"[[models]]
id = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct"
version = "3"
[[models.backends]]
url = "http://a:1"
weight = 2
[[models.backends]]
url = "http://b:1"
[[deployments]]
name = "from-catalog"
model = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct"
keys = ["{KEY_A}"]
"#
    );
    let config = Config::parse(&text, "t.toml", &no_env).unwrap();
    assert_eq!(config.models[0].backends.len(), 2);
    let inherited: Vec<(String, u32)> =
        config.deployments[0].backends.iter().map(|b| (b.url.to_string(), b.weight)).collect();
    assert_eq!(inherited, vec![("http://a:1".to_owned(), 2), ("http://b:1".to_owned(), 1)]);
    let missing = "[[models]]\nid = \"azureml://registries/x/models/y\"\nversion = \"1\"\n";
    let err = Config::parse(missing, "t.toml", &no_env).unwrap_err();
    assert_eq!(err.field, "models[0].backend");
}

#[test]
fn one_backend_url_cannot_have_two_quotas() {
    let first = pool_config("[[deployments.backends]]\nurl = \"http://a:1\"\nrequests_per_minute = 60\n");
    let second =
        first.replace("llama-pool", "other-pool").replace("requests_per_minute = 60\n", "requests_per_minute = 61\n");
    let err = Config::parse(&format!("{first}{second}"), "t.toml", &no_env).unwrap_err();
    assert_eq!(err.field, "deployments[1].backends");
    assert!(err.message.contains("60 requests") && err.message.contains("61 requests"), "{err}");
    let same = first.replace("llama-pool", "other-pool");
    assert!(Config::parse(&format!("{first}{same}"), "t.toml", &no_env).is_ok());
}

mod consumers {
    use super::*;

    const KEY_C: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
    const KEY_D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000002";

    fn with(consumers: &str) -> Result<Config, ConfigError> {
        Config::parse(&example(&format!("requests_per_minute = 100\n{consumers}")), "t.toml", &no_env)
    }

    fn error(consumers: &str) -> ConfigError {
        with(consumers).expect_err("must be refused")
    }

    #[test]
    fn a_consumer_with_grants_and_quotas_is_read() {
        let config = with(&format!(
            "[[consumers]]\nname = \"batch\"\nproject = \"team-a\"\nkeys = [\"{KEY_C}\", \"{KEY_D}\"]\ntokens_per_month = 5000000\n[[consumers.grants]]\ndeployment = \"meta-llama3-8b-qwerty\"\nrequests_per_minute = 30\ntokens_per_day = 100000\n"
        ))
        .unwrap();
        let c = &config.consumers[0];
        assert_eq!((c.name.as_str(), c.project.as_str()), ("batch", "team-a"));
        assert_eq!(c.periods.tokens_per_month, Some(5_000_000));
        let g = &c.grants[0];
        // A limit left out is the deployment's.
        assert_eq!(g.limits, Some(Limits { requests_per_minute: 30, tokens_per_minute: 200_000 }));
        assert_eq!(g.periods.tokens_per_day, Some(100_000));
        assert!(c.keys.secondary.is_some());
    }

    #[test]
    fn bad_consumers_are_refused_at_their_line_with_what_to_do() {
        let grant = "[[consumers.grants]]\ndeployment = \"meta-llama3-8b-qwerty\"\n";
        let cases = [
            // A grant of a deployment the file does not declare.
            (
                format!(
                    "[[consumers]]\nname = \"a\"\nkeys = [\"{KEY_C}\"]\n[[consumers.grants]]\ndeployment = \"nope\"\n"
                ),
                "consumers[0].grants[0].deployment",
                "no deployment named 'nope'",
            ),
            // Limits above the deployment's.
            (
                format!("[[consumers]]\nname = \"a\"\nkeys = [\"{KEY_C}\"]\n{grant}requests_per_minute = 101\n"),
                "consumers[0].grants[0].requests_per_minute",
                "at most the deployment's",
            ),
            // Two consumers of one name in a project.
            (
                format!(
                    "[[consumers]]\nname = \"a\"\nkeys = [\"{KEY_C}\"]\n{grant}[[consumers]]\nname = \"A\"\nkeys = [\"{KEY_D}\"]\n{grant}"
                ),
                "consumers[1].name",
                "declared twice",
            ),
            // A key that is the deployment's, or another consumer's.
            (
                format!("[[consumers]]\nname = \"a\"\nkeys = [\"{KEY_A}\"]\n{grant}"),
                "consumers[0].keys[0]",
                "deployment 'meta-llama3-8b-qwerty'",
            ),
            (
                format!(
                    "[[consumers]]\nname = \"a\"\nkeys = [\"{KEY_C}\"]\n{grant}[[consumers]]\nname = \"b\"\nkeys = [\"{KEY_D}\", \"{KEY_C}\"]\n{grant}"
                ),
                "consumers[1].keys[1]",
                "consumer 'default/a'",
            ),
            // No grant, the same deployment twice, a zero quota, a bad name.
            (format!("[[consumers]]\nname = \"a\"\nkeys = [\"{KEY_C}\"]\n"), "consumers[0].grants", "at least one"),
            (
                format!("[[consumers]]\nname = \"a\"\nkeys = [\"{KEY_C}\"]\n{grant}{grant}"),
                "consumers[0].grants[1].deployment",
                "granted twice",
            ),
            (
                format!("[[consumers]]\nname = \"a\"\nkeys = [\"{KEY_C}\"]\ntokens_per_day = 0\n{grant}"),
                "consumers[0].tokens_per_day",
                "between 1 and",
            ),
            (
                format!("[[consumers]]\nname = \"a b\"\nkeys = [\"{KEY_C}\"]\n{grant}"),
                "consumers[0].name",
                "consumer name",
            ),
            (
                format!("[[consumers]]\nname = \"a\"\nkeys = [\"{KEY_C}\"]\n{grant}limit = 3\n"),
                "limit",
                "unknown field",
            ),
        ];
        for (text, field, message) in cases {
            let e = error(&text);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(message), "{e}");
            assert!(e.line > 10, "the line of the consumer, not the file's start: {e}");
        }
    }
}

#[test]
fn metrics_detail_defaults_to_summary_and_names_its_errors() {
    use crate::config::metrics::DeploymentDetail;
    let config = Config::parse(&example(""), "t.toml", &no_env).unwrap();
    assert_eq!(config.metrics, crate::config::metrics::MetricsConfig::standard());
    assert_eq!(config.metrics.detail_of("anything"), DeploymentDetail::Summary);
    let text =
        format!("{}\n[metrics]\ndeployments = \"off\"\nfull_detail = [\"a\"]\nconsumers = \"off\"\n", example(""));
    let config = Config::parse(&text, "t.toml", &no_env).unwrap();
    assert_eq!(config.metrics.detail_of("a"), DeploymentDetail::Full);
    assert_eq!(config.metrics.detail_of("b"), DeploymentDetail::Off);
    assert!(!config.metrics.consumers && config.metrics.backends);
    for (table, field, says) in [
        ("deployments = \"most\"", "metrics.deployments", "use \"off\", \"summary\" or \"full\""),
        ("full_detail = [\"a\", \"a\"]", "metrics.full_detail", "listed twice"),
        ("backends = \"no\"", "metrics.backends", "use \"on\" or \"off\""),
    ] {
        let text = format!("{}\n[metrics]\n{table}\n", example(""));
        let error = Config::parse(&text, "t.toml", &no_env).unwrap_err();
        assert_eq!(error.field, field, "{error}");
        assert!(error.message.contains(says), "{error}");
    }
}

#[test]
fn leases_are_sized_per_deployment_or_as_a_share_of_the_limits_and_only_on_redis() {
    use crate::core::quota::lease::LeaseSize;
    let parse = |limits: &str, extra: &str| {
        Config::parse(&format!("[limits]\n{limits}\n{}", example(extra)), "t.toml", &no_env)
    };
    let redis = "store = \"redis\"\nredis_url = \"redis://x\"";
    let lease = |limits: &str, extra: &str| parse(limits, extra).unwrap().deployments[0].lease;
    let size = |requests, tokens| Some(LeaseSize { requests, tokens });
    assert_eq!(lease(redis, ""), None, "no leases unless asked for");
    assert_eq!(lease(redis, "lease_requests = 20\nlease_tokens = 5000"), size(20, 5_000));
    // One given: the other is the same share (2% of 1,000 requests; of 200,000 tokens).
    assert_eq!(lease(redis, "lease_requests = 20"), size(20, 4_000));
    assert_eq!(lease(redis, "lease_tokens = 4000"), size(20, 4_000));
    let share = format!("{redis}\nlease_percent = 1");
    assert_eq!(lease(&share, ""), size(10, 2_000));
    assert_eq!(lease(&share, "lease_requests = 50"), size(50, 10_000), "a deployment's own comes first");
    assert_eq!(lease(&share, "lease_requests = 0"), None, "0 turns leases off for one deployment");
    assert_eq!(lease(&share, "requests_per_minute = 100"), None, "1% of 100 is one request: no lease");
    let ttl = |limits: &str| match parse(limits, "").unwrap().store {
        StoreConfig::Redis(redis) => redis.lease_ttl,
        StoreConfig::Memory => panic!("redis store expected"),
    };
    assert_eq!(ttl(redis), Duration::from_secs(1));
    assert_eq!(ttl(&format!("{redis}\nlease_ms = 200")), Duration::from_millis(200));
    let with = |more: &str| format!("{redis}\n{more}");
    for (limits, extra, field, says) in [
        (String::new(), "lease_requests = 20", "deployments[0].lease_requests", "store = \"redis\""),
        (
            redis.to_owned(),
            "lease_requests = 1001",
            "deployments[0].lease_requests",
            "at most the deployment's limit (1000",
        ),
        (redis.to_owned(), "lease_requests = 1", "deployments[0].lease_requests", "at least 2"),
        (redis.to_owned(), "lease_tokens = 200001", "deployments[0].lease_tokens", "limit (200000"),
        ("lease_ms = 100".to_owned(), "", "limits.lease_ms", "only used with store = \"redis\""),
        (with("lease_ms = 5"), "", "limits.lease_ms", "between 10 and 60000"),
        (with("lease_percent = 51"), "", "limits.lease_percent", "between 1 and 50"),
        (with("lease_percent = 0"), "", "limits.lease_percent", "between 1 and 50"),
    ] {
        let err = parse(&limits, extra).unwrap_err();
        assert_eq!(err.field, field, "{limits} / {extra}: {err}");
        assert!(err.message.contains(says), "{limits} / {extra}: {err}");
    }
}
