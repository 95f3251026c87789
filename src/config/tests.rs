//! The configuration's tests: parsing, validation, the embedded default, the shipped examples.

use super::validate::parse_upstream_url;
use super::*;
use crate::pusher::channel::{OTHER_HOSTS, PUSHER_HOSTS};
use secrecy::ExposeSecret;
use std::collections::HashMap;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    move |k| map.get(k).cloned()
}

/// A configuration of one app in front of a loopback `http://` upstream,
/// with `extra` lines in its `[upstream]` table.
fn with_upstream(extra: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(
        &format!(
            "[upstream]\nurl = \"http://127.0.0.1:6001\"\n{extra}\n\
             [[apps]]\nid = \"4242\"\nkey = \"k\"\nsecret = \"s\"\n"
        ),
        &env(&[]),
    )
}

#[test]
fn shipped_examples_are_valid() {
    let vars = env(&[("PUSHER_APP_SECRET", "s")]);
    for (name, text) in [
        ("example.toml", include_str!("../../config/example.toml")),
        (
            "sockudo-local.toml",
            include_str!("../../config/sockudo-local.toml"),
        ),
    ] {
        Config::from_toml_str(text, &vars).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn minimal_config_and_defaults() {
    let c = Config::from_toml_str(
        r#"
        [upstream]
        url = "http://127.0.0.1:6001"
        [[apps]]
        id = "4242"
        key = "k"
        secret = "s"
        "#,
        &env(&[]),
    )
    .expect("valid");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.timestamp_window_secs, 600);
    assert_eq!(c.upstream.timeout, Duration::from_secs(10));
    assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:6001/");
    let app = c.apps.iter().find(|a| a.id == "4242").expect("app");
    assert_eq!(app.subscription_count, SubscriptionCounting::On);
    // Not Pusher: the upstream's own data limit decides, under the body's.
    assert_eq!(app.max_data_bytes, c.max_body_bytes);
    assert_eq!(app.secrets[0].expose_secret(), "s");
    assert!(!app.is_mapped());
    assert_eq!(app.upstream.id, "4242");
    assert!(
        !format!("{c:?}").contains("\"s\""),
        "secret must not be in Debug"
    );
}

#[test]
fn pusher_upstream_probes_by_default() {
    let counting = |host: &str| {
        Config::from_toml_str(
            &format!(
                "[upstream]\nurl = \"https://{host}\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n"
            ),
            &env(&[]),
        )
        .expect("valid")
        .apps[0]
            .subscription_count
    };
    for host in PUSHER_HOSTS {
        assert_eq!(counting(host), SubscriptionCounting::Probe, "{host}");
    }
    for host in OTHER_HOSTS {
        assert_eq!(counting(host), SubscriptionCounting::On, "{host}");
    }
}

/// The shipped self-hosted pair: the proxy's `batch_max` is within the
/// Sockudo app's `max_event_batch_size`, which refuses a larger batch.
#[test]
fn sockudo_example_batches_fit_its_apps_limit() {
    let local = Config::from_toml_str(include_str!("../../config/sockudo-local.toml"), &env(&[]))
        .expect("valid");
    let server: toml::Value =
        toml::from_str(include_str!("../../config/sockudo-server.toml")).expect("Sockudo's TOML");
    let apps = server["app_manager"]["array"]["apps"]
        .as_array()
        .expect("Sockudo's apps");
    for app in apps {
        let limit = app["policy"]["limits"]["max_event_batch_size"]
            .as_integer()
            .expect("each app sets max_event_batch_size");
        assert!(
            local.batching.max as i64 <= limit,
            "batch_max {} above app {}'s limit {limit}",
            local.batching.max,
            app["id"]
        );
    }
    assert!(local.batching.max > 10, "the example uses Sockudo's room");
}

#[test]
fn workers_default_to_one_per_core() {
    let text = |workers: &str| {
        format!(
            "{workers}\n[upstream]\nurl = \"http://127.0.0.1:6001\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n"
        )
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default = Config::from_toml_str(&text(""), &env(&[])).expect("valid");
    assert_eq!((default.workers, default.workers()), (0, cores));
    let three = Config::from_toml_str(&text("workers = 3"), &env(&[])).expect("valid");
    assert_eq!(three.workers(), 3);
    let err = Config::from_toml_str(&text("workers = 5000"), &env(&[])).expect_err("too many");
    assert!(err.to_string().contains("workers"), "{err}");
}

#[test]
fn unknown_key_is_named() {
    let err = Config::from_toml_str("[upstream]\nurl = \"http://x\"\ntimeout = 5\n", &env(&[]))
        .expect_err("unknown key");
    assert!(err.to_string().contains("timeout"), "{err}");
}

#[test]
fn every_problem_is_listed() {
    let err = Config::from_toml_str(
        r#"
        listen = "nowhere"
        [upstream]
        url = "ftp://x/prefix"
        timeout_ms = 0
        [[apps]]
        id = "1"
        key = ""
        secret_env = "MISSING"
        [[apps]]
        id = "1"
        key = "k"
        secret = "s"
        subscription_count = "probe"
        "#,
        &env(&[]),
    )
    .expect_err("invalid");
    let problems = err.problems();
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        vec![
            "listen",
            "upstream.timeout_ms",
            "upstream.url",
            "apps[0].key",
            "apps[0].secret_env",
            "apps[1].id"
        ],
        "{problems:?}"
    );
}

#[test]
fn invalid_enum_value_is_named() {
    let err = Config::from_toml_str(
        "[upstream]\nurl = \"http://x\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nsubscription_count = \"maybe\"\n",
        &env(&[]),
    )
    .expect_err("bad enum");
    assert!(err.to_string().contains("maybe"), "{err}");
}

/// A TOML error names the line, the column and what is wrong, never the
/// line's text nor a value: the log, `POST /reload`'s answer and
/// `validate` show it, and the value could be a secret.
#[test]
fn syntax_errors_never_show_a_value_or_the_line() {
    let app = "[upstream]\nurl = \"http://x\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\n";
    for (text, line) in [
        // A list expected, a string given: serde quotes the value.
        (
            format!("{app}secret = \"s\"\nprevious_secrets = \"hunter2-old-secret\"\n"),
            7,
        ),
        // An unterminated string: toml quotes the line.
        (format!("{app}secret = \"hunter2-unterminated\n"), 6),
        (with_admin("token = [\"hunter2-token\"]"), 2),
        (with_admin("token = \"hunter2-token\" trailing"), 2),
        // A number where a string is expected: serde puts it in backticks.
        (with_admin("token = 84736251904857"), 2),
        // An escaped quote inside a quoted value.
        (
            format!("{app}secret = \"s\"\nprevious_secrets = \"old\\\"hunter2-tail\"\n"),
            7,
        ),
    ] {
        let err = Config::from_toml_str(&text, &env(&[])).expect_err("syntax");
        let said = err.problems().join("\n");
        assert!(!said.contains("hunter2"), "{said}");
        assert!(!said.contains("84736251904857"), "{said}");
        assert!(said.starts_with("config syntax at line "), "{said}");
        assert!(said.contains(&format!("line {line},")), "{text}: {said}");
        assert_eq!(said.lines().count(), 1, "{said}");
    }
}

/// What a syntax error leaves in: the key it is about, and the tokens
/// TOML's grammar expected.
#[test]
fn syntax_errors_keep_the_key_names() {
    let app = "[upstream]\nurl = \"http://x\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
    let said = |text: String| {
        Config::from_toml_str(&text, &env(&[]))
            .expect_err("syntax")
            .problems()
            .join("\n")
    };
    let typo = said(format!("{app}secert = \"x\"\n"));
    assert!(typo.contains("unknown field `secert`"), "{typo}");
    assert!(typo.contains("`secret`"), "{typo}");
    let grammar = said("[upstream\n".to_owned());
    assert!(grammar.contains("expected `]`"), "{grammar}");
}

#[test]
fn upstream_url_rules() {
    assert!(parse_upstream_url("https://api-mt1.pusher.com").is_ok());
    assert!(parse_upstream_url("http://127.0.0.1:6001/").is_ok());
    assert!(parse_upstream_url("http://127.0.0.1:6001/x").is_err());
    assert!(parse_upstream_url("http://127.0.0.1:6001/?a=1").is_err());
    assert!(parse_upstream_url("http://u:p@host").is_err());
    assert!(parse_upstream_url("127.0.0.1:6001").is_err());
}

/// The URL a message quotes has no user info: it could hold a password,
/// and the message reaches the log, `POST /reload`'s answer and `validate`.
#[test]
fn upstream_url_messages_leave_out_user_info() {
    for url in [
        "https://admin:hunter2@api.example.com",
        "http://admin:hunter2@127.0.0.1:6001/x?q=1",
        "https://hunter2@host/path@x",
    ] {
        let said = parse_upstream_url(url).expect_err("refused");
        assert!(!said.contains("hunter2"), "{said}");
        assert!(said.contains("…@"), "{said}");
    }
    let said = parse_upstream_url("https://a:hunter2@h").expect_err("refused");
    assert!(said.contains("must not carry user info"), "{said}");
    let said = parse_upstream_url("ftp://host").expect_err("refused");
    assert!(
        said.contains("`ftp://host`"),
        "unchanged without user info: {said}"
    );
}

#[test]
fn env_default_with_cluster_and_app() {
    let c = Config::from_env(&env(&[
        ("PUSHER_APP_ID", "7"),
        ("PUSHER_APP_KEY", "key"),
        ("PUSHER_APP_SECRET", "secret"),
        ("PUSHER_CLUSTER", "eu"),
    ]))
    .expect("valid");
    assert_eq!(c.upstream.url.to_string(), "https://api-eu.pusher.com/");
    assert_eq!(c.apps.len(), 1);
    assert_eq!(c.apps[0].key, "key");
    assert_eq!(c.apps[0].secrets[0].expose_secret(), "secret");
}

#[test]
fn env_default_self_hosted() {
    let c = Config::from_env(&env(&[
        ("PUSHER_HOST", "127.0.0.1"),
        ("PUSHER_PORT", "6001"),
        ("PUSHER_SCHEME", "http"),
    ]))
    .expect("valid");
    assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:6001/");
    assert!(c.apps.is_empty());
    let d = Config::from_env(&env(&[])).expect("valid");
    assert_eq!(d.upstream.url.to_string(), "https://api-mt1.pusher.com/");
}

#[test]
fn env_default_partial_app_names_missing_vars() {
    let err = Config::from_env(&env(&[("PUSHER_APP_ID", "7")])).expect_err("partial");
    let text = err.to_string();
    assert!(
        text.contains("PUSHER_APP_KEY") && text.contains("PUSHER_APP_SECRET"),
        "{text}"
    );
}

#[test]
fn instance_is_configured_else_pod_else_host() {
    let base = r#"
        [upstream]
        url = "http://127.0.0.1:6001"
    "#;
    let with = |extra: &str, vars: &[(&str, &str)]| {
        Config::from_toml_str(&format!("{base}\n[telemetry]\n{extra}"), &env(vars))
    };
    let instance =
        |extra: &str, vars: &[(&str, &str)]| with(extra, vars).expect("valid").telemetry.instance;
    let both = [("POD_NAME", "web-7d9f-abcde"), ("HOSTNAME", "node-3")];
    assert_eq!(instance(r#"instance = "cron-1""#, &both), "cron-1");
    assert_eq!(instance("", &both), "web-7d9f-abcde");
    assert_eq!(instance("", &[("HOSTNAME", "node-3")]), "node-3");
    assert_eq!(
        instance("", &[("POD_NAME", ""), ("HOSTNAME", "node 3\u{e9}")]),
        "node_3_",
        "a name from the environment is made to fit"
    );
    let host = instance("", &[]);
    assert!(
        !host.is_empty() && host.chars().all(|c| c.is_ascii_graphic()),
        "{host:?}"
    );
    for bad in [r#"instance = """#, r#"instance = "a b""#] {
        let e = with(bad, &[]).expect_err(bad);
        assert!(
            e.problems()
                .iter()
                .any(|p| p.contains("telemetry.instance")),
            "{bad}: {:?}",
            e.problems()
        );
    }
}

fn with_admin(admin: &str) -> String {
    format!(
        "[admin]\n{admin}\n[upstream]\nurl = \"http://127.0.0.1:6001\"\n\
         [[apps]]\nid = \"4242\"\nkey = \"k\"\nsecret = \"s\"\n"
    )
}

#[test]
fn admin_token_inline_from_env_or_file_never_in_debug() {
    let c = Config::from_toml_str(&with_admin(""), &env(&[])).expect("valid");
    assert!(c.admin.token.is_none());

    let c = Config::from_toml_str(&with_admin("token = \"inline-tok\""), &env(&[])).expect("valid");
    let token = c.admin.token.as_ref().expect("token");
    assert_eq!(token.expose_secret(), "inline-tok");
    assert!(!format!("{c:?}").contains("inline-tok"), "token in Debug");

    let c = Config::from_toml_str(
        &with_admin("token_env = \"ADMIN_TOKEN\""),
        &env(&[("ADMIN_TOKEN", "env-tok")]),
    )
    .expect("valid");
    let token = c.admin.token.as_ref().expect("token");
    assert_eq!(token.expose_secret(), "env-tok");
    assert!(!format!("{c:?}").contains("env-tok"), "token in Debug");

    // A file (a mounted Secret): whole, less one trailing line break; a
    // second line break, or an empty file, is refused, naming the key.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    let from_file = |text: &str| {
        std::fs::write(&path, text).expect("write");
        Config::from_toml_str(
            &with_admin(&format!("token_file = {:?}", path.display().to_string())),
            &env(&[]),
        )
    };
    for text in ["file-tok", "file-tok\n", "file-tok\r\n"] {
        let c = from_file(text).expect("valid");
        let token = c.admin.token.as_ref().expect("token");
        assert_eq!(token.expose_secret(), "file-tok", "{text:?}");
        assert!(!format!("{c:?}").contains("file-tok"), "token in Debug");
    }
    for (text, message) in [
        ("file-tok\n\n", "printable ASCII"),
        ("", "must not be empty"),
    ] {
        let problems = from_file(text).expect_err(text).problems();
        assert_eq!(problems.len(), 1, "{text:?}: {problems:?}");
        assert!(
            problems[0].starts_with("admin.token_file: ") && problems[0].contains(message),
            "{text:?}: {problems:?}"
        );
    }
    // `validate` lints a file whose token file is not there (a CI job):
    // a warning naming the key, and the rest checked.
    std::fs::remove_file(&path).expect("remove");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        with_admin(&format!("token_file = {:?}", path.display().to_string())),
    )
    .expect("write");
    let (_, warnings) = Config::lint_file(&config, &env(&[]), false).expect("linted");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key, "admin.token_file");
    let err = Config::lint_file(&config, &env(&[]), true).expect_err("required");
    assert!(err.problems()[0].starts_with("admin.token_file: "), "{err}");
}

#[test]
fn admin_token_problems_are_named() {
    let vars = env(&[("EMPTY", ""), ("NEWLINE", "tok\n")]);
    for (admin, key, message) in [
        ("token = \"\"", "admin.token", "must not be empty"),
        ("token = \"a b\"", "admin.token", "printable ASCII"),
        (
            "token_env = \"MISSING\"",
            "admin.token_env",
            "`MISSING` is not set",
        ),
        (
            "token_env = \"EMPTY\"",
            "admin.token_env",
            "`EMPTY` is not set",
        ),
        (
            "token_env = \"NEWLINE\"",
            "admin.token_env",
            "printable ASCII",
        ),
        (
            "token = \"t\"\ntoken_env = \"NEWLINE\"",
            "admin.token",
            "not more",
        ),
        (
            "token_env = \"NEWLINE\"\ntoken_file = \"/nonexistent/t\"",
            "admin.token",
            "not more",
        ),
        (
            "token_file = \"/nonexistent/admin-token\"",
            "admin.token_file",
            "cannot read `/nonexistent/admin-token`",
        ),
    ] {
        let err = Config::from_toml_str(&with_admin(admin), &vars).expect_err(admin);
        let problems = err.problems();
        assert_eq!(problems.len(), 1, "{admin}: {problems:?}");
        assert!(
            problems[0].starts_with(&format!("{key}: ")) && problems[0].contains(message),
            "{admin}: {problems:?}"
        );
        assert!(!problems[0].contains("tok\n"), "the value is never shown");
    }
}

// upstream.protocol
#[test]
fn upstream_protocol_defaults_to_auto_and_sockudo_examples_use_h2c() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:6001\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
    let c = Config::from_toml_str(base, &env(&[])).expect("valid");
    assert_eq!(c.upstream.protocol, UpstreamProtocol::Auto);
    for (text, expected) in [
        ("h2c", UpstreamProtocol::H2c),
        ("http1", UpstreamProtocol::Http1),
        ("auto", UpstreamProtocol::Auto),
    ] {
        let toml = base.replace("[[apps]]", &format!("protocol = \"{text}\"\n[[apps]]"));
        let c = Config::from_toml_str(&toml, &env(&[])).expect("valid");
        assert_eq!(c.upstream.protocol, expected);
        assert_eq!(expected.as_str(), text);
    }
    let https = base
        .replace("http://", "https://")
        .replace("[[apps]]", "protocol = \"h2c\"\n[[apps]]");
    let err = Config::from_toml_str(&https, &env(&[]))
        .expect_err("h2c needs http://")
        .to_string();
    assert!(err.contains("upstream.protocol"), "{err}");
    let local = Config::from_toml_str(include_str!("../../config/sockudo-local.toml"), &env(&[]))
        .expect("valid");
    assert_eq!(local.upstream.protocol, UpstreamProtocol::H2c);
}

#[test]
fn batching_defaults_and_limits() {
    let parse = with_upstream;
    let c = parse("").expect("valid");
    assert_eq!(
        c.batching,
        Batching {
            in_flight: 2,
            max: 10
        }
    );
    assert!(c.batching.enabled());
    let c = parse("batch_in_flight = 1\nbatch_max = 1").expect("valid");
    assert_eq!(
        c.batching,
        Batching {
            in_flight: 1,
            max: 1
        }
    );
    assert!(!c.batching.enabled(), "batch_max = 1 turns coalescing off");
    for (extra, key, says) in [
        (
            "batch_in_flight = 0",
            "upstream.batch_in_flight",
            "greater than 0",
        ),
        ("batch_max = 0", "upstream.batch_max", "1 to 100"),
        ("batch_max = 101", "upstream.batch_max", "1 to 100"),
    ] {
        let e = parse(extra).expect_err(extra).to_string();
        assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
    }
    // A self-hosted upstream (Sockudo) takes more than Pusher's 10.
    for max in [11, 50, 100] {
        let c = parse(&format!("batch_max = {max}")).expect("valid");
        assert_eq!(c.batching.max, max);
    }
}

#[test]
fn batch_max_stays_within_pushers_limit_on_pusher() {
    let on = |host: &str, max: usize| {
        Config::from_toml_str(
            &format!(
                "[upstream]\nurl = \"https://{host}\"\nbatch_max = {max}\n\
                 [[apps]]\nid = \"4242\"\nkey = \"k\"\nsecret = \"s\"\n"
            ),
            &env(&[]),
        )
    };
    for host in PUSHER_HOSTS {
        assert_eq!(on(host, 10).expect(host).batching.max, 10);
        let e = on(host, 11).expect_err(host).to_string();
        assert!(
            e.contains("upstream.batch_max") && e.contains("1 to 10") && e.contains("Pusher"),
            "{host}: {e}"
        );
    }
    // Only Pusher's own domains are held to its limit.
    for host in OTHER_HOSTS {
        assert_eq!(on(host, 50).expect(host).batching.max, 50);
    }
}

#[test]
fn upstream_pings_default_to_10_s_and_0_turns_them_off() {
    let ping = |extra: &str| with_upstream(extra).expect("valid").upstream.ping_interval;
    assert_eq!(ping(""), Some(Duration::from_secs(10)));
    assert_eq!(
        ping("ping_interval_ms = 250"),
        Some(Duration::from_millis(250))
    );
    assert_eq!(ping("ping_interval_ms = 0"), None);
}

#[test]
fn upstream_idle_timeout_defaults_to_a_minute_and_is_positive() {
    let idle = |extra: &str| with_upstream(extra).expect("valid").upstream.idle_timeout;
    assert_eq!(idle(""), Duration::from_secs(60));
    assert_eq!(idle("idle_timeout_ms = 4000"), Duration::from_secs(4));
    let err = with_upstream("idle_timeout_ms = 0")
        .expect_err("zero")
        .to_string();
    assert!(err.contains("upstream.idle_timeout_ms"), "{err}");
}

#[test]
fn upstream_max_connections_has_a_ceiling() {
    let max = |n: usize| with_upstream(&format!("max_connections = {n}"));
    assert!(max(MAX_UPSTREAM_EXCHANGES).is_ok());
    let err = max(MAX_UPSTREAM_EXCHANGES + 1)
        .expect_err("above the ceiling")
        .to_string();
    assert!(err.contains("upstream.max_connections"), "{err}");
    assert!(err.contains("65536"), "{err}");
}

/// A one-app config with `top` as top-level keys, `app` in its `[[apps]]`
/// table and `admin` in `[admin]`.
fn one_app(top: &str, app: &str, admin: &str) -> String {
    format!(
        "{top}\n[upstream]\nurl = \"http://127.0.0.1:6001\"\n[admin]\n{admin}\n\
         [[apps]]\nid = \"4242\"\nkey = \"k\"\n{app}\n"
    )
}

/// An upstream that is the proxy's own `listen` is refused: every call
/// would loop back into it. In the environment mode, that is the app's
/// `PUSHER_HOST`/`PUSHER_PORT` handed to the sidecar too.
#[test]
fn an_upstream_at_the_proxys_own_listen_is_refused() {
    let with = |listen: &str, url: &str| {
        problems_of(
            &format!(
                "listen = \"{listen}\"\n[admin]\nenabled = false\n[upstream]\nurl = \"{url}\"\n"
            ),
            &[],
        )
    };
    for (listen, url) in [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("0.0.0.0:8080", "http://localhost:8080"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        ("[::]:80", "http://[::1]"),
        ("[::]:80", "http://127.0.0.1"),
        ("10.0.0.5:443", "https://10.0.0.5"),
    ] {
        let problems = with(listen, url);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("upstream.url:") && p.contains("own `listen`")),
            "{listen} {url}: {problems:?}"
        );
    }
    for (listen, url) in [
        ("127.0.0.1:8080", "http://127.0.0.1:6001"),
        ("127.0.0.1:443", "http://127.0.0.1"),
        ("10.0.0.5:8080", "http://10.0.0.6:8080"),
        ("127.0.0.1:8080", "http://sockudo:8080"),
        // A loopback listen takes its own address only.
        ("127.0.0.1:8080", "http://127.0.0.2:8080"),
        ("127.0.0.1:8080", "http://[::1]:8080"),
        ("0.0.0.0:8080", "http://[::1]:8080"),
        // Another host, maybe: a listen on 0.0.0.0 does not say.
        ("0.0.0.0:8080", "http://10.1.2.3:8080"),
    ] {
        assert_eq!(with(listen, url), Vec::<String>::new(), "{listen} {url}");
    }
    let looped = Config::from_env(&env(&[
        ("PUSHER_HOST", "127.0.0.1"),
        ("PUSHER_PORT", "8080"),
        ("PUSHER_SCHEME", "http"),
    ]))
    .expect_err("the default listen is 127.0.0.1:8080");
    assert!(looped.to_string().contains("own `listen`"), "{looped}");
}

/// `max_data_bytes` by default: Pusher's 10,240 behind Pusher, else the
/// body limit (the upstream's own limit decides, spec E.5 item 13); a set
/// value wins either way.
#[test]
fn the_data_limit_follows_the_upstream_unless_set() {
    let limit = |url: &str, app: &str| {
        let c = Config::from_toml_str(
            &format!(
                "max_body_bytes = 65536\n[upstream]\nurl = \"{url}\"\n\
                 [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n{app}"
            ),
            &env(&[]),
        )
        .expect("valid");
        c.apps[0].max_data_bytes
    };
    assert_eq!(limit("https://api-eu.pusher.com", ""), 10_240);
    assert_eq!(limit("http://127.0.0.1:6001", ""), 65_536);
    assert_eq!(
        limit("https://api-eu.pusher.com", "max_data_bytes = 20480"),
        20_480
    );
    assert_eq!(
        limit("http://127.0.0.1:6001", "max_data_bytes = 10240"),
        10_240
    );
}

/// An app may not be called `other`, the `app_id` label of the requests
/// for apps not configured: the two would share one series. Its upstream
/// may know it by that name.
#[test]
fn an_app_called_other_is_refused() {
    let problems = problems_of(
        &one_app("", "secret = \"s\"", "").replace("4242", "other"),
        &[],
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("apps[0].id"), "{problems:?}");
    assert!(problems[0].contains("must not be `other`"), "{problems:?}");
    let upstream = one_app("", "secret = \"s\"\n[apps.upstream]\nid = \"other\"", "");
    assert_eq!(problems_of(&upstream, &[]), Vec::<String>::new());
}

/// The problems `text` has (none: valid), said as `validate` says them.
fn problems_of(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match Config::from_toml_str(text, &env(vars)) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems(),
    }
}

/// Signatures are over a key's and a secret's exact bytes: one with a
/// line break (a variable read from a file), a space or a control
/// character is refused, naming the key and never the value.
#[test]
fn keys_and_secrets_are_printable_ascii_without_spaces() {
    let refused = [
        (
            one_app("", "secret_env = \"S\"", ""),
            vec![("S", "hunter2\n")],
            "apps[0].secret_env",
        ),
        (
            one_app("", "secret_env = \"S\"", ""),
            vec![("S", "hunter2\r\n")],
            "apps[0].secret_env",
        ),
        (
            one_app("", "secret = \"hunter2 x\"", ""),
            vec![],
            "apps[0].secret",
        ),
        (
            one_app(
                "",
                "secret = \"s\"\nprevious_secrets = [\"hunter2\\t\"]",
                "",
            ),
            vec![],
            "apps[0].previous_secrets[0]",
        ),
        (
            one_app("", "secret = \"s\"", "").replace("key = \"k\"", "key = \"k\\n\""),
            vec![],
            "apps[0].key",
        ),
        (
            one_app("", "secret = \"s\"\n[apps.upstream]\nkey = \"k 2\"", ""),
            vec![],
            "apps[0].upstream.key",
        ),
        (
            one_app(
                "",
                "secret = \"s\"\n[apps.upstream]\nsecret_env = \"U\"",
                "",
            ),
            vec![("U", "hunter2\n")],
            "apps[0].upstream.secret_env",
        ),
    ];
    for (text, vars, key) in refused {
        let said = problems_of(&text, &vars).join("\n");
        assert!(said.contains(key), "{key}: {said}");
        assert!(said.contains("printable ASCII"), "{said}");
        assert!(!said.contains("hunter2"), "{said}");
    }
    let newline = problems_of(&one_app("", "secret_env = \"S\"", ""), &[("S", "s\n")]).join("\n");
    assert!(newline.contains("ends with a line break"), "{newline}");
    assert!(problems_of(&one_app("", "secret = \"s3cr3t-!~\"", ""), &[]).is_empty());
}

/// A `sunset` is said in an HTTP-date, which holds 1970 to 9999 (UTC).
#[test]
fn a_sunset_outside_what_an_http_date_says_is_refused() {
    for sunset in ["1969-12-31T23:59:59Z", "9999-12-31T23:59:59-01:00"] {
        let text = one_app("", &format!("secret = \"s\"\nsunset = \"{sunset}\""), "");
        let said = problems_of(&text, &[]).join("\n");
        assert!(
            said.contains("apps[0].sunset") && said.contains("1970 and 9999"),
            "{said}"
        );
    }
    for sunset in [
        "1970-01-01T00:00:00Z",
        "2030-06-30T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ] {
        let text = one_app("", &format!("secret = \"s\"\nsunset = \"{sunset}\""), "");
        assert!(problems_of(&text, &[]).is_empty(), "{sunset}");
    }
}

/// A brownout window is held to the same years as `sunset`: an end written
/// at 9999-12-31T23:00-01:00 (year 10000 at UTC) is refused rather than
/// left to fail where the window is shown.
#[test]
fn a_brownout_outside_what_an_http_date_says_is_refused() {
    let window = |end: &str| {
        one_app(
            "",
            &format!(
                "secret = \"s\"\nbrownouts = [{{ start = \"2027-05-12T14:00:00Z\", end = \"{end}\" }}]"
            ),
            "",
        )
    };
    let said = problems_of(&window("9999-12-31T23:00:00-01:00"), &[]).join("\n");
    assert!(
        said.contains("apps[0].brownouts[0].end") && said.contains("1970 and 9999"),
        "{said}"
    );
    assert!(problems_of(&window("9999-12-31T23:00:00Z"), &[]).is_empty());
}

/// Limits the server cannot honour are refused, not left to fail at start.
#[test]
fn connection_and_header_limits_have_a_ceiling() {
    let said = problems_of(
        &one_app(
            "max_connections = 2305843009213693952",
            "secret = \"s\"",
            "",
        ),
        &[],
    )
    .join("\n");
    assert!(
        said.contains("max_connections") && said.contains("at most 1048576"),
        "{said}"
    );
    let said = problems_of(
        &one_app("max_header_bytes = 2000000", "secret = \"s\"", ""),
        &[],
    )
    .join("\n");
    assert!(said.contains("max_header_bytes"), "{said}");
    for ok in ["max_connections = 1048576", "max_header_bytes = 262144"] {
        assert!(
            problems_of(&one_app(ok, "secret = \"s\"", ""), &[]).is_empty(),
            "{ok}"
        );
    }
}

/// The proxy and admin listeners cannot share a port when one of them is
/// on every address of the other's family (`[::]` covers both on Linux).
#[test]
fn listeners_on_one_port_are_refused_when_one_covers_the_other() {
    for (listen, admin) in [
        ("0.0.0.0:18080", "127.0.0.1:18080"),
        ("127.0.0.1:18080", "0.0.0.0:18080"),
        ("[::]:18080", "127.0.0.1:18080"),
        ("[::1]:18080", "[::]:18080"),
    ] {
        let text = one_app(
            &format!("listen = \"{listen}\""),
            "secret = \"s\"",
            &format!("listen = \"{admin}\""),
        );
        let said = problems_of(&text, &[]).join("\n");
        assert!(
            said.contains("admin.listen") && said.contains("share port"),
            "{listen} {admin}: {said}"
        );
    }
    for (listen, admin) in [
        ("127.0.0.1:18080", "127.0.0.2:18080"),
        ("0.0.0.0:18080", "[::1]:18080"),
        ("0.0.0.0:18080", "0.0.0.0:19090"),
    ] {
        let text = one_app(
            &format!("listen = \"{listen}\""),
            "secret = \"s\"",
            &format!("listen = \"{admin}\""),
        );
        assert!(problems_of(&text, &[]).is_empty(), "{listen} {admin}");
    }
}

/// Settings valid alone that work against each other are cautions, not
/// problems: the defaults have none.
#[test]
fn settings_that_work_against_each_other_are_cautions() {
    let keys = |top: &str, upstream: &str| -> Vec<String> {
        let text = format!(
            "{top}\n[upstream]\nurl = \"http://127.0.0.1:6001\"\n{upstream}\n\
             [[apps]]\nid = \"4242\"\nkey = \"k\"\nsecret = \"s\"\n"
        );
        let config = Config::from_toml_str(&text, &env(&[])).expect("valid");
        config.cautions().into_iter().map(|c| c.key).collect()
    };
    assert!(keys("", "").is_empty(), "the defaults");
    assert!(
        keys("shutdown_grace_ms = 20000", "").is_empty(),
        "twice 10 s"
    );
    assert_eq!(keys("shutdown_grace_ms = 19999", ""), ["shutdown_grace_ms"]);
    assert_eq!(
        keys("", "timeout_ms = 20000"),
        ["shutdown_grace_ms"],
        "a longer upstream time against the default grace"
    );
    assert_eq!(
        keys("", "connect_timeout_ms = 10000"),
        ["upstream.connect_timeout_ms"]
    );
    assert!(keys("", "connect_timeout_ms = 9999").is_empty());
}

/// A secret read from a file (`secret_file`): whole, less one trailing line
/// break, for the app and for its upstream; a file that cannot be read, an
/// empty one, one with an inner line break, or a second source is a
/// problem naming the key and the file, never what it holds.
#[test]
fn a_secret_is_read_from_its_file() {
    use secrecy::ExposeSecret;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        format!("{:?}", path.display().to_string())
    };
    let (lf, crlf, bare) = (
        file("lf", "s3cret\n"),
        file("crlf", "up\r\n"),
        file("bare", "s"),
    );
    let text = one_app(
        "",
        &format!("secret_file = {lf}\n[apps.upstream]\nsecret_file = {crlf}"),
        "",
    );
    let config = Config::from_toml_str(&text, &env(&[])).expect("valid");
    let app = &config.apps[0];
    assert_eq!(app.secrets[0].expose_secret(), "s3cret");
    assert_eq!(app.upstream.secret.expose_secret(), "up");
    let config = Config::from_toml_str(
        &one_app("", &format!("secret_file = {bare}"), ""),
        &env(&[]),
    )
    .expect("valid");
    assert_eq!(config.apps[0].secrets[0].expose_secret(), "s");

    let missing = format!("{:?}", dir.path().join("missing").display().to_string());
    let (empty, inner) = (file("empty", "\n"), file("inner", "KEPT-SECRET\nLINE\n"));
    for (app, key, says) in [
        (
            format!("secret_file = {missing}"),
            "apps[0].secret_file",
            "cannot read",
        ),
        (
            format!("secret_file = {empty}"),
            "apps[0].secret_file",
            "must not be empty",
        ),
        (
            format!("secret_file = {inner}"),
            "apps[0].secret_file",
            "printable ASCII",
        ),
        (
            format!("secret = \"s\"\nsecret_file = {bare}"),
            "apps[0].secret",
            "not more",
        ),
        (
            format!("secret = \"s\"\n[apps.upstream]\nsecret_file = {missing}"),
            "apps[0].upstream.secret_file",
            "cannot read",
        ),
    ] {
        let problems = problems_of(&one_app("", &app, ""), &[]);
        let found = problems
            .iter()
            .find(|p| p.starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("{key} not in {problems:?}"));
        assert!(found.contains(says), "{found}");
        assert!(!found.contains("KEPT-SECRET"), "{found}");
    }
}

/// The config hash is published unauthenticated (`/readyz`, `/metrics`),
/// so it leaves out the values of inline secrets and the admin token,
/// however they are written; every other byte of the text counts,
/// comments included. `validate` (`lint_file`) hashes as `serve` does.
#[test]
fn the_config_hash_leaves_out_inline_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    let file = |secret: &str, previous: &str, upstream: &str, token: &str, comment: &str| {
        format!(
            "# {comment}\n[admin]\ntoken = {token}\n[upstream]\nurl = \"http://127.0.0.1:6001\"\n\
             [[apps]]\nid = \"4242\"\nkey = \"k\"\nsecret = {secret}\n\
             previous_secrets = [{previous}]\n[apps.upstream]\nid = \"9\"\nkey = \"k9\"\n\
             secret = {upstream}\n\
             [[apps]]\nid = \"77\"\nkey = \"k7\"\nsecret_env = \"S7\"\n"
        )
    };
    let hash = |text: &str| {
        let c = Config::from_toml_str(text, &env(&[("S7", "s7")])).expect("valid");
        std::fs::write(&path, text).expect("write");
        let (linted, _) = Config::lint_file(&path, &env(&[]), false).expect("valid");
        assert_eq!(linted.hash, c.hash, "validate hashes as serve does");
        c.hash
    };
    let base = file("\"s\"", "\"old\"", "\"u\"", "\"t0k3n\"", "one");
    let h = hash(&base);
    for (what, other) in [
        (
            "secret",
            file("\"s2\"", "\"old\"", "\"u\"", "\"t0k3n\"", "one"),
        ),
        (
            "secret, literal",
            file("'s'", "\"old\"", "\"u\"", "\"t0k3n\"", "one"),
        ),
        (
            "previous_secrets",
            file("\"s\"", "\"older\"", "\"u\"", "\"t0k3n\"", "one"),
        ),
        (
            "upstream.secret",
            file("\"s\"", "\"old\"", "\"u2\"", "\"t0k3n\"", "one"),
        ),
        (
            "admin.token",
            file("\"s\"", "\"old\"", "\"u\"", "\"hunter2\"", "one"),
        ),
    ] {
        assert_eq!(hash(&other), h, "{what} changed the hash");
    }
    assert_ne!(
        h,
        source_hash(&base),
        "the text's own hash, secrets and all"
    );
    let two = file("\"s\"", "\"old\", \"older\"", "\"u\"", "\"t0k3n\"", "one");
    assert_ne!(hash(&two), h, "a second previous secret is a change");
    let comment = file("\"s\"", "\"old\"", "\"u\"", "\"t0k3n\"", "two");
    assert_ne!(hash(&comment), h, "the rest of the text counts");
    // An inline table's secret, too.
    let inline = |secret: &str| {
        format!(
            "apps = [{{ id = \"1\", key = \"k\", secret = {secret} }}]\n\
             [upstream]\nurl = \"http://127.0.0.1:6001\"\n"
        )
    };
    assert_eq!(hash(&inline("\"a\"")), hash(&inline("\"b\"")));
    assert_ne!(hash(&inline("\"a\"")), source_hash(&inline("\"a\"")));
    // A dotted key at the top, multi-line strings, CRLF line ends.
    let other_forms = |token: &str, secret: &str| {
        format!(
            "admin.token = {token}\r\n[upstream]\r\nurl = \"http://127.0.0.1:6001\"\r\n\
             [[apps]]\r\nid = \"1\"\r\nkey = \"k\"\r\nsecret = {secret}\r\n"
        )
    };
    let a = other_forms("\"tok-a\"", "\"\"\"s-a\"\"\"");
    let b = other_forms("'tok-b'", "'''s-b'''");
    assert_eq!(hash(&a), hash(&b));
    assert_ne!(hash(&a), source_hash(&a));
}

/// `upstream.ca_file`: the roots of an `https://` upstream, read at load
/// (so a changed file is a changed upstream, and a reload makes a new
/// pool); every problem names the key and the file, never its contents.
#[test]
fn upstream_ca_file_is_read_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = |url: &str, path: &std::path::Path| {
        Config::from_toml_str(
            &format!(
                "[upstream]\nurl = \"{url}\"\nca_file = {:?}\n\
                 [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
                path.display().to_string()
            ),
            &env(&[]),
        )
    };
    let made = rcgen::generate_simple_self_signed(vec!["sockudo.internal".into()]).expect("cert");
    let other = rcgen::generate_simple_self_signed(vec!["sockudo.internal".into()]).expect("cert");
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, format!("{}{}", made.cert.pem(), other.cert.pem())).expect("write");
    let c = ca("https://sockudo.internal", &pem).expect("valid");
    assert_eq!(
        c.upstream.ca_certificates,
        Some(vec![made.cert.der().clone(), other.cert.der().clone()])
    );
    std::fs::write(&pem, made.cert.pem()).expect("write");
    let fewer = ca("https://sockudo.internal", &pem).expect("valid");
    assert_ne!(
        fewer.upstream, c.upstream,
        "another file is another upstream"
    );
    assert_eq!(
        with_upstream("").expect("valid").upstream.ca_certificates,
        None,
        "no file: the Mozilla roots"
    );

    let key = dir.path().join("key.pem");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    // Good base64, but no certificate in it.
    let not_x509 = dir.path().join("not-x509.pem");
    std::fs::write(
        &not_x509,
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    for (url, path, message) in [
        (
            "http://sockudo.internal",
            pem.clone(),
            "`https://` upstream.url",
        ),
        (
            "https://sockudo.internal",
            not_x509.clone(),
            "not readable X.509",
        ),
        (
            "https://sockudo.internal",
            dir.path().join("missing.pem"),
            "cannot read",
        ),
        (
            "https://sockudo.internal",
            key.clone(),
            "holds no PEM certificate",
        ),
        (
            "https://sockudo.internal",
            garbage.clone(),
            "is not valid PEM",
        ),
    ] {
        let err = ca(url, &path).expect_err(url);
        let problems = err.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("upstream.ca_file: ") && problems[0].contains(message),
            "{problems:?}"
        );
        assert!(!problems[0].contains("PRIVATE KEY"), "{problems:?}");
    }
    // An upstream.url that is no URL is its own problem, not the file's.
    let err = ca("not a url", &pem).expect_err("bad url");
    assert_eq!(err.problems().len(), 1, "{err}");
    assert!(err.problems()[0].starts_with("upstream.url: "), "{err}");

    // `validate` lints a file whose CA file is only on the host: a
    // warning, the rest checked; `--require-env` (as `serve`) refuses it.
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"https://sockudo.internal\"\nca_file = {:?}\n\
             [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
            dir.path()
                .join("only-on-the-host.pem")
                .display()
                .to_string()
        ),
    )
    .expect("write");
    let (linted, warnings) = Config::lint_file(&config, &env(&[]), false).expect("linted");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key, "upstream.ca_file");
    assert_eq!(linted.upstream.ca_certificates, None);
    let err = Config::lint_file(&config, &env(&[]), true).expect_err("required");
    assert!(err.problems()[0].starts_with("upstream.ca_file: "), "{err}");
}

/// `apps[].previous_secrets_file`: the secrets a rotation still accepts,
/// from a file (a mounted Secret), one per line, beside any inline
/// `previous_secrets`; a bad line is named by its number, never shown.
#[test]
fn previous_secrets_are_read_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("previous");
    let file_line = format!(
        "secret = \"s\"\nprevious_secrets_file = {:?}",
        path.display().to_string()
    );
    let load = |text: &str, inline: &str| {
        std::fs::write(&path, text).expect("write");
        Config::from_toml_str(
            &one_app("", &format!("{inline}\n{file_line}"), ""),
            &env(&[]),
        )
    };
    let secrets = |c: &Config| -> Vec<String> {
        c.apps[0]
            .secrets
            .iter()
            .map(|s| s.expose_secret().to_owned())
            .collect()
    };
    let c = load(
        "old-1\r\n\n  \t\nold-2",
        "previous_secrets = [\"inline-old\"]",
    )
    .expect("valid");
    let all = secrets(&c);
    assert_eq!(all.len(), 4, "current, inline, two from the file");
    assert_eq!(&all[1..], ["inline-old", "old-1", "old-2"]);
    assert!(
        c.apps[0].resigns(),
        "re-signed while previous secrets are set"
    );
    assert!(!format!("{c:?}").contains("old-1"), "no secret in Debug");
    // An empty file: the rotation is over.
    let c = load("", "").expect("valid");
    assert_eq!(secrets(&c).len(), 1);

    let err = load("fine\nnot fine\n", "").expect_err("a space");
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("apps[0].previous_secrets_file: line 2 of"),
        "{problems:?}"
    );
    assert!(!problems[0].contains("not fine"), "{problems:?}");
    std::fs::remove_file(&path).expect("remove");
    let err = Config::from_toml_str(&one_app("", &file_line, ""), &env(&[])).expect_err("gone");
    assert!(
        err.problems()[0].starts_with("apps[0].previous_secrets_file: cannot read"),
        "{err}"
    );
    // `validate` lints it where the Secret is not mounted: a warning.
    let config = dir.path().join("c.toml");
    std::fs::write(&config, one_app("", &file_line, "")).expect("write");
    let (_, warnings) = Config::lint_file(&config, &env(&[]), false).expect("linted");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key, "apps[0].previous_secrets_file");
}
